"""The store's metadata: pieces, recipes, blobs, links, open ingests, packs, trash.

:class:`Metadata` is the interface; :class:`SqliteMetadata` implements it on an embedded
SQLite database in WAL mode (a networked database can implement the same methods). Every
method is one transaction: either all of it happens or none of it does, which is what makes
a ``kill -9`` at any point leave a consistent store.

Invariants the methods keep:

- ``pieces.refs`` is the number of times committed recipes name the piece.
- A piece is removed only when ``refs = 0`` and no open ingest holds it
  (``ingest_pieces``); the lookup that lets an ingest reuse a piece and the row that holds
  it are written in one transaction, so GC cannot remove a piece between the two.
- Pack bytes are released only after the transaction that stopped referencing them has
  committed (via ``trash``), so a crash can leak space but never lose referenced bytes.

Schema (``meta.db``)::

    pieces(key BLOB PRIMARY KEY, length, stored, codec, pack, offset, data, refs)
    blobs(digest TEXT PRIMARY KEY, size, recipe BLOB, created)     recipe: (key, length)*
    links(holder, digest)                                         who holds a blob
    ingests(id PRIMARY KEY, algorithm, offset, npieces, pack, pack_size, tail_len, created, updated)
    ingest_pieces(ingest, seq, key, length, stored, codec, pack, offset, data)
    packs(name PRIMARY KEY, live, created)                        live: bytes of live pieces
    trash(id, pack, offset, length)                               ranges to free (offset NULL: whole pack)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "IngestRow",
    "Location",
    "Metadata",
    "decode_recipe",
    "encode_recipe",
]

CODEC_RAW = 0
CODEC_ZSTD = 1

_ENTRY = struct.Struct("<32sI")


def encode_recipe(entries: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(_ENTRY.pack(k, n) for k, n in entries)


def decode_recipe(blob: bytes) -> list[tuple[bytes, int]]:
    return list(_ENTRY.iter_unpack(blob))


@dataclass(frozen=True, slots=True)
class Location:
    """Where a piece's stored bytes are: a pack range, or inline ``data``."""

    key: bytes
    length: int  # raw (logical) length
    stored: int  # stored length (compressed or raw)
    codec: int
    pack: str | None
    offset: int
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class IngestRow:
    id: str
    algorithm: str
    offset: int
    npieces: int
    pack: str | None
    pack_size: int
    tail_len: int
    created: float
    updated: float


class Metadata(Protocol):
    """What the store needs from its metadata database (see the module docstring)."""

    def close(self) -> None: ...
    # ingests
    def create_ingest(self, ingest_id: str, algorithm: str) -> IngestRow: ...
    def get_ingest(self, ingest_id: str) -> IngestRow | None: ...
    def list_ingests(self) -> list[IngestRow]: ...
    def set_ingest_pack(self, ingest_id: str, pack: str) -> None: ...
    def hold_existing(self, ingest_id: str, entries: list[tuple[int, bytes]]) -> dict[bytes, Location]: ...
    def checkpoint(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                   offset: int, npieces: int, pack_size: int, tail_len: int) -> None: ...
    def ingest_recipe(self, ingest_id: str) -> list[tuple[int, Location]]: ...
    def rewind_ingest(self, ingest_id: str) -> None: ...
    def drop_ingest(self, ingest_id: str) -> None: ...
    def commit_blob(self, ingest_id: str | None, digest: str, size: int,
                    recipe: list[tuple[bytes, int]], new: dict[bytes, Location],
                    link: str | None) -> bool: ...
    # reads
    def blob(self, digest: str) -> tuple[int, bytes] | None: ...
    def locations(self, keys: Iterable[bytes]) -> dict[bytes, Location]: ...
    # links
    def link(self, holder: str, digest: str) -> bool: ...
    def link_all(self, holder: str, digests: list[str]) -> list[str] | None: ...
    def unlink(self, holder: str, digest: str) -> bool: ...
    def is_linked(self, holder: str, digest: str) -> bool: ...
    def holders(self, digest: str) -> list[str]: ...
    def linked(self, holder: str) -> list[str]: ...
    def delete_blob(self, digest: str) -> bool: ...
    # maintenance
    def collect_blobs(self, older_than: float, batch: int = 500) -> int: ...
    def collect_pieces(self, batch: int = 5000) -> tuple[int, int]: ...
    def trash(self, limit: int = 1000) -> list[tuple[int, str, int | None, int | None]]: ...
    def forget_trash(self, ids: list[int]) -> None: ...
    def is_pack_known(self, pack: str) -> bool: ...
    def pack_names(self) -> set[str]: ...
    def pack_live(self) -> dict[str, int]: ...
    def stats(self) -> dict[str, int]: ...
    def snapshot(self) -> AbstractContextManager[Metadata]: ...
    def iter_blobs(self) -> Iterator[tuple[str, int, bytes]]: ...
    def iter_pieces(self) -> Iterator[tuple[Location, int]]: ...
    def dangling_links(self) -> list[tuple[str, str]]: ...
