"""``pybuild serve``, ``push``, ``pull``, ``copy``: the registry package's commands."""

from __future__ import annotations

import click

from .client_cli import COMMANDS
from .serve_cmd import serve

__all__ = ["register"]


def register(root: click.Group) -> None:
    """Add this package's commands to the root ``pybuild`` group."""
    root.add_command(serve)
    for command in COMMANDS:
        root.add_command(command)
