"""The errors of ``--output`` and ``--load``: one module below both the output writers
(:mod:`builder.outputs`) and the Docker engine client (:mod:`builder.engine`)."""

from __future__ import annotations

__all__ = ["ExportError", "OutputError"]


class OutputError(ValueError):
    """An ``--output`` value that cannot be used (says what to write instead)."""


class ExportError(Exception):
    """Writing an output failed (names the output and why)."""
