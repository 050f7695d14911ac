"""``pybuild serve``, ``push``, ``pull``, ``copy``: the registry package's commands."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(root: click.Group) -> None:
    """Add this package's commands to the root ``pybuild`` group."""
