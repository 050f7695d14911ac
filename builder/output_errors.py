"""The errors of ``--output`` and ``--load``: one module below both the output writers
(:mod:`builder.outputs`) and the Docker engine client (:mod:`builder.engine`)."""

from __future__ import annotations

__all__ = ["ExportError", "OutputError", "cannot_write"]


class OutputError(ValueError):
    """An ``--output`` value that cannot be used (says what to write instead)."""


class ExportError(Exception):
    """Writing an output failed (names the output and why)."""


def cannot_write(dest: object, exc: OSError) -> str:
    """One line naming the destination, why it cannot be written and what to do."""
    why = (exc.strerror or str(exc)).lower()
    return (f"cannot write {dest}: {why}; choose a destination on a writable file system "
            "with free space")
