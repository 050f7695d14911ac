"""What the store hands out about blobs: sizes, recipes, segments, open ingests.

A leaf module (it imports only :mod:`cas.digest`), so the store, its ingests and its
maintenance can all name these without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import Digest

__all__ = ["BlobInfo", "IngestInfo", "Piece", "Recipe", "Segment"]


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int
    # The committing ingest's own cut of the blob (``(key hex, length)`` in blob order)
    # when the store keeps another recipe for it (the blob existed, cut otherwise by
    # whoever committed it first); None when the store's recipe is this commit's. A
    # registry records it as the pushing repository's recipe (registry/server/recipes.py).
    own_recipe: tuple[tuple[str, int], ...] | None = None
    # Whether the commit linked a holder in its transaction (``link``, or ``link_own``
    # when the store's recipe is this commit's cut).
    linked: bool = False


@dataclass(frozen=True, slots=True)
class Piece:
    """One piece of a blob: its BLAKE3 key (hex) and where it sits in the blob."""

    key: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Recipe:
    digest: Digest
    size: int
    pieces: tuple[Piece, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.digest),
            "size": self.size,
            "pieces": [{"key": p.key, "offset": p.offset, "length": p.length} for p in self.pieces],
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of a blob's bytes: ``path[offset:offset+length]`` on disk (raw, sendfile-able),
    or the bytes themselves in ``data`` when ``path`` is None (bytes, or a read-only view
    of a buffer no one changes)."""

    path: Path | None
    offset: int
    length: int
    data: bytes | memoryview | None = None


@dataclass(frozen=True, slots=True)
class IngestInfo:
    """An open ingest: its id, the bytes checkpointed so far, and when it began and last
    checkpointed (seconds since the epoch)."""

    id: str
    offset: int
    algorithm: str
    created: float
    updated: float
