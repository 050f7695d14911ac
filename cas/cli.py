"""``pybuild storage stats|gc|fsck``."""

from __future__ import annotations

import click

__all__ = ["storage"]


@click.group()
def storage() -> None:
    """Inspect and maintain the content-addressed store."""
