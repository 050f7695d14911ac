"""Ingest: a blob assembled from whole pieces, without cutting.

When the pieces of a blob are known beforehand (a pull that has the recipe of the blob
from the registry: most pieces already in the store, the others fetched and checked
against their keys), re-cutting and re-keying what the store already holds is wasted
work. An *assembled* ingest takes the blob as a sequence of pieces instead of bytes:

- :meth:`Ingest.append_pieces`: pieces given by their bytes. Each is keyed here (BLAKE3)
  and stored as one piece, exactly as given (not cut again); one the store already has
  is held, not written again.
- :meth:`Ingest.reuse_pieces`: pieces the store holds, given by key and length. They are
  held (GC cannot take them before the commit) and their bytes are read only to go into
  the blob's digest: runs of them that lie end to end in one pack are read in one call.

The OCI digest is computed over every byte in order, as for a cut ingest, and the
commit still verifies it (and the size): a wrong or hostile recipe can make the commit
fail, never commit wrong bytes. An ingest is either cut (``write``/``receive``) or
assembled, never both; an assembled ingest is not checkpointed (the pull that uses it
fetches little, and starts again when it breaks off).

:class:`IngestAssembly` is this part of :class:`~cas.ingest.Ingest` (its base class);
its methods run on worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import StoreCorrupt
from .frames import stream_kind
from .ingest_checkpoints import IngestCheckpoints
from .meta import Location
from .pack_reads import hash_locations, prefetch_locations

if TYPE_CHECKING:
    from .digest import Hasher

__all__ = ["IngestAssembly", "PieceMissing"]


class PieceMissing(StoreCorrupt):
    """A piece given to :meth:`~cas.ingest.Ingest.reuse_pieces` is not in the store (or
    has another length): nothing was appended, the ingest stays usable (the caller may
    fetch the piece instead)."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"piece {key} {why}")
        self.key = key


@dataclass(frozen=True, slots=True)
class _Reuse:
    pieces: list[tuple[bytes, int]]  # (key, length), in blob order
    found: set[bytes]  # the keys this call began to hold
    locs: list[Location]


class IngestAssembly(IngestCheckpoints):
    """Appending whole pieces to an :class:`~cas.ingest.Ingest`, which sets these
    attributes."""

    offset: int
    _hasher: Hasher

    def _append_sync(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        for p in pieces:
            self._hasher.update(p)
        # Each piece stays whole: the cutter is not asked. Frames of a compressed layer
        # (each piece one frame, starting with its magic) are not worth compressing again.
        views = [memoryview(p) for p in pieces]
        framed = bool(views) and stream_kind(bytes(views[0][:4])) is not None
        self._store_pieces(views, compressible=not framed)

    def _hold_sync(self, pieces: list[tuple[bytes, int]]) -> _Reuse:
        """Hold the pieces (every job of the ingest has ended, so ``_seq`` is final);
        PieceMissing, with nothing recorded, for one the store does not hold."""
        first = self._seq
        fresh = [(first + i, k) for i, (k, _) in enumerate(pieces)
                 if k not in self._new and k not in self._held]
        # reuse_pieces is given pieces the caller just found in the store (has_pieces).
        found = self._core.meta.hold_existing(self.id, fresh, expected=True) if fresh else {}
        # Pieces held by an earlier call (a key that repeats): one lookup for all of them.
        again = [k for k, _ in pieces if k not in found and k not in self._new and k in self._held]
        held = self._core.meta.locations(again) if again else {}
        locs: list[Location] = []
        for key, length in pieces:
            loc = found.get(key) or self._new.get(key) or held.get(key)
            if loc is None:
                raise PieceMissing(key.hex(), "is not in the store")
            if loc.length != length:
                raise PieceMissing(key.hex(), f"is {loc.length} bytes long, not {length}")
            locs.append(loc)
        prefetch_locations(self._core, locs)  # read from the disk while earlier jobs run
        return _Reuse(pieces, set(found), locs)

    def _reuse_sync(self, reuse: _Reuse) -> None:
        """Feed held pieces to the digest and the recipe (a job of the ingest's chain)."""
        if self._writer is not None and any(loc.pack == self._writer.name for loc in reuse.locs):
            self._writer.sync()
        self._hash_locations(reuse.locs)
        first = self._seq
        for i, (key, length) in enumerate(reuse.pieces):
            if key in reuse.found:
                self._held.add(key)
            else:
                self._unsaved.append((first + i, key, length, self._new.get(key)))
            self._recipe.append((key, length))
        self._seq += len(reuse.pieces)

    def _hash_locations(self, locs: list[Location]) -> None:
        """Feed the pieces' bytes to the digest, in runs (:func:`~cas.pack_reads.hash_locations`)."""
        try:
            hash_locations(self._core, self._hasher, locs)
        except StoreCorrupt as exc:
            raise StoreCorrupt(f"ingest {self.id}: {exc}") from exc
