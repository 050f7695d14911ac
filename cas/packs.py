"""Byte storage for pieces: append-only *pack* files, and the protocols of their backends.

A pack holds the new pieces of one ingest, written in blob order, so a fresh blob's
pieces are contiguous and a GET is a few large ``sendfile`` calls (DESIGN.md: millions of
tiny files are slow to write, list, back up and delete).

Every backend implements :class:`PackBackend`; ``tests/cas/test_packs.py`` is the one
suite every backend must pass. Methods are synchronous and may block: the store calls
them from worker threads, never from the event loop.

The backends live in modules of their own and are re-exported here:
:class:`FilesystemPacks` (``cas.pack_files``: pack files on disk, their on-disk layout
and O_DIRECT writes) and :class:`MemoryPacks` (``cas.pack_memory``: a test double).
:class:`cas.pack_s3.S3Packs` (sealed segments in an S3 bucket) is not re-exported: it
loads its client library only when a store uses it (``cas.pack_select`` chooses).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from .pack_files import FilesystemPacks
from .pack_memory import MemoryPacks

__all__ = ["FilesystemPacks", "MemoryPacks", "PackBackend", "PackWriter"]



class PackWriter(Protocol):
    """Appends to one pack. Appended bytes are readable through the backend and durable
    only after :meth:`sync`."""

    name: str

    @property
    def size(self) -> int:
        """Bytes in the pack (the offset the next append gets)."""

    def append(self, data: bytes | memoryview) -> int:
        """Append ``data``; return the offset it was written at. StorageFull when full."""

    def append_many(self, parts: Sequence[bytes | memoryview]) -> list[int]:
        """Append each of ``parts`` in order (one system call where the backend can);
        return their offsets. On failure none of them counts as appended."""

    def sync(self) -> None:
        """Make every appended byte durable (fsync)."""

    def close(self) -> None:
        """Release the writer; the pack stays."""


class PackBackend(Protocol):
    """Where pack bytes live. Contracts:

    - ``create(name)`` makes an empty pack and returns its writer; ``open_append(name,
      size)`` reopens an existing pack for appending after truncating it to ``size`` (used
      to resume an ingest after a crash: bytes past the last checkpoint are discarded).
    - ``read(name, offset, length)`` returns exactly ``length`` bytes or raises
      StoreCorrupt (missing pack, short read).
    - ``local_path(name)`` is a file path for ``sendfile`` when the pack is a local file,
      else None.
    - ``free(name, offset, length)`` releases the space of a dead range (hole punching);
      reads of that range afterwards are undefined. May be a no-op.
    - ``delete(name)`` removes the pack; deleting a missing pack is not an error.
    - ``names()`` lists every pack; ``size(name)`` its length (None when missing).
    """

    def create(self, name: str) -> PackWriter: ...
    def open_append(self, name: str, size: int) -> PackWriter: ...
    def read(self, name: str, offset: int, length: int) -> bytes: ...
    def local_path(self, name: str) -> Path | None: ...
    def free(self, name: str, offset: int, length: int) -> None: ...
    def delete(self, name: str) -> None: ...
    def names(self) -> list[str]: ...
    def size(self, name: str) -> int | None: ...
    def allocated(self) -> int: ...

