"""Choosing the registry's metadata backend: the one place that builds it (above both the
protocol in :mod:`registry.server.metadata` and its implementations)."""

from __future__ import annotations

from pathlib import Path

from .metadata import RegistryMetadata
from .metadata_sqlite import SqliteMetadata

__all__ = ["open_metadata"]


async def open_metadata(root: Path, database: str | None = None,
                        migrate: bool = False) -> RegistryMetadata:
    """The metadata backend a server runs on: the PostgreSQL ``database`` when given (a
    libpq URI or conninfo; ``migrate``: bring its schema up to date first), else the
    embedded SQLite file ``root/registry.db``."""
    if database:
        from .metadata_pg import PgRegistryMetadata

        return await PgRegistryMetadata.open(database, migrate=migrate)
    return await SqliteMetadata.open(root / "registry.db")
