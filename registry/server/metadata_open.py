"""Choosing the registry's metadata backend: the one place that builds it (above both the
protocol in :mod:`registry.server.metadata` and its implementations)."""

from __future__ import annotations

from pathlib import Path

from .metadata import RegistryMetadata
from .metadata_sqlite import SqliteMetadata

__all__ = ["open_metadata"]


async def open_metadata(root: Path) -> RegistryMetadata:
    """The metadata backend a server with storage directory ``root`` runs on: today the
    embedded SQLite file ``root/registry.db``. A networked backend is chosen here, from the
    configuration, when one exists."""
    return await SqliteMetadata.open(root / "registry.db")
