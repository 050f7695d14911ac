"""``pybuild build`` and ``pybuild parse``: the builder package's commands."""

from __future__ import annotations

import click

__all__ = ["register"]


def register(root: click.Group) -> None:
    """Add this package's commands to the root ``pybuild`` group."""
    from .build_cmd import build
    from .parse_cmd import parse_command

    root.add_command(parse_command)
    root.add_command(build)
