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

The OCI digest is computed over every byte in order, as for a cut ingest (or, after
:meth:`Ingest.hash_from`, from a kept SHA-256 state of a blob the new one begins as:
:mod:`cas.digest_states`), and the commit still verifies it (and the size): a wrong
or hostile recipe can make the commit fail, never commit wrong bytes. An ingest is either
cut (``write``/``receive``) or assembled, never both; an assembled ingest is not
checkpointed (the pull that uses it fetches little, and starts again when it breaks off).

:class:`IngestAssembly` is this part of :class:`~cas.ingest.Ingest` (its base class);
its methods run on worker threads.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .digest import Digest
from .digest_states import Sha256, load_state, new_state_hasher, save_states
from .errors import StoreCorrupt
from .frames import stream_kind
from .holders import ingest_holder
from .ingest_checkpoints import IngestCheckpoints
from .meta import Location, decode_recipe
from .pack_reads import hash_locations, prefetch_locations

if TYPE_CHECKING:
    from .digest import Hasher

__all__ = ["IngestAssembly", "PieceMissing", "Resumed"]


class PieceMissing(StoreCorrupt):
    """A piece given to :meth:`~cas.ingest.Ingest.reuse_pieces` is not in the store (or
    has another length): nothing was appended, the ingest stays usable (the caller may
    fetch the piece instead)."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"piece {key} {why}")
        self.key = key


@dataclass(frozen=True, slots=True)
class Resumed:
    """The digest was started from ``source``'s kept state after ``offset`` bytes, which
    ``pieces`` (the source's first pieces, by key and length) cover."""

    source: str
    offset: int
    pieces: list[tuple[bytes, int]]


@dataclass(frozen=True, slots=True)
class _Reuse:
    pieces: list[tuple[bytes, int]]  # (key, length), in blob order
    found: set[bytes]  # the keys this call began to hold
    locs: list[Location]


class IngestAssembly(IngestCheckpoints):
    """Appending whole pieces to an :class:`~cas.ingest.Ingest`, which sets these
    attributes."""

    offset: int
    algorithm: str
    _hasher: Hasher
    _resumed: Resumed | None
    _fed: int = 0  # bytes of the blob the digest jobs have passed (hashed or resumed)
    _within: dict[str, set[tuple[bytes, int]]]  # blobs named by reuse_pieces: their pieces
    _linked: set[str]  # those of them held by a link

    def _append_sync(self, pieces: list[bytes | bytearray | memoryview]) -> None:
        for p in pieces:
            skip = self._skip(len(p))
            if skip < len(p):
                self._hasher.update(memoryview(p)[skip:] if skip else p)
        # Each piece stays whole: the cutter is not asked. Frames of a compressed layer
        # (each piece one frame, starting with its magic) are not worth compressing again.
        views = [memoryview(p) for p in pieces]
        framed = bool(views) and stream_kind(bytes(views[0][:4])) is not None
        self._store_pieces(views, compressible=not framed)

    def _hold_sync(self, pieces: list[tuple[bytes, int]], within: tuple[str, ...] = ()) -> _Reuse:
        """Hold the pieces (every job of the ingest has ended, so ``_seq`` is final);
        PieceMissing, with nothing recorded, for one the store does not hold. By the
        blobs ``within`` when they hold them all (:meth:`_hold_within`)."""
        if within:
            reuse = self._hold_within(pieces, within)
            if reuse is not None:
                return reuse
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
        # Read from the disk while earlier jobs run (not what the resumed digest covers).
        prefetch_locations(self._core, self._after_resumed(locs))
        return _Reuse(pieces, set(found), locs)

    def _hold_within(self, pieces: list[tuple[bytes, int]], within: tuple[str, ...]) -> _Reuse | None:
        """Hold the pieces by linking the committed blobs ``within`` (holder
        :func:`~cas.holders.ingest_holder`: GC keeps a linked blob, and so its pieces,
        until the commit or abort removes the link), if those blobs' recipes name every
        one of them; None otherwise, or when one of the blobs is gone (nothing linked).

        One row per blob instead of one per piece, and the lookups go through the
        reader: little is left for the write transactions that every ingest waits for.
        The pieces' locations are read after the link, so they stay valid; those the
        resumed digest covers whole are not read at all."""
        meta = self._core.meta
        for digest in within:
            if digest not in self._within:
                row = meta.blob(digest)
                if row is None:
                    return None
                self._within[digest] = set(decode_recipe(row[1]))
        covers = [self._within[d] for d in within]
        if not all(any(p in c for c in covers) for p in pieces):
            return None
        unlinked = [d for d in within if d not in self._linked]
        if unlinked:
            if meta.link_all(ingest_holder(self.id), unlinked) is None:
                return None
            self._linked.update(unlinked)
        # Pieces that end before the resumed state's offset are never read.
        pos, skipped = self.offset, 0
        while (skipped < len(pieces) and self._resumed is not None
               and pos + pieces[skipped][1] <= self._resumed.offset):
            pos += pieces[skipped][1]
            skipped += 1
        found = meta.locations(k for k, _ in pieces[skipped:])
        locs = [Location(k, n, -1, -1, None, -1) for k, n in pieces[:skipped]]
        for key, length in pieces[skipped:]:
            loc = found.get(key)
            if loc is None:  # a held blob's piece: only a damaged store lacks it
                raise PieceMissing(key.hex(), "is not in the store")
            if loc.length != length:
                raise PieceMissing(key.hex(), f"is {loc.length} bytes long, not {length}")
            locs.append(loc)
        prefetch_locations(self._core, locs[skipped:])
        return _Reuse(pieces, {k for k, _ in pieces}, locs)

    def _reuse_sync(self, reuse: _Reuse) -> None:
        """Feed held pieces to the digest and the recipe (a job of the ingest's chain)."""
        if self._writer is not None and any(loc.pack == self._writer.name for loc in reuse.locs):
            self._writer.sync()
        self._hash_reused(reuse.locs)
        first = self._seq
        for i, (key, length) in enumerate(reuse.pieces):
            if key in reuse.found:
                self._held.add(key)
            else:
                self._unsaved.append((first + i, key, length, self._new.get(key)))
            self._recipe.append((key, length))
        self._seq += len(reuse.pieces)

    def _hash_reused(self, locs: list[Location]) -> None:
        """Feed held pieces to the digest, but for the bytes its kept state covers."""
        i = 0
        while i < len(locs) and self._resumed is not None and self._fed < self._resumed.offset:
            skip = self._skip(locs[i].length)
            if skip < locs[i].length:
                self._hasher.update(memoryview(self._core.load(locs[i]))[skip:])
            i += 1
        self._fed += sum(loc.length for loc in locs[i:])
        self._hash_locations(locs[i:])

    def _skip(self, n: int) -> int:
        """Of the blob's next ``n`` bytes, how many the resumed digest covers."""
        pos, self._fed = self._fed, self._fed + n
        if self._resumed is None or pos >= self._resumed.offset:
            return 0
        return min(n, self._resumed.offset - pos)

    def _after_resumed(self, locs: list[Location]) -> list[Location]:
        """``locs`` (of pieces from byte :attr:`offset` on) but those the resumed digest covers."""
        if self._resumed is None:
            return locs
        pos, out = self.offset, []
        for loc in locs:
            if pos + loc.length > self._resumed.offset:
                out.append(loc)
            pos += loc.length
        return out

    def _resume_sync(self, blob: Digest, upto: int) -> int:
        row = self._core.meta.blob(str(blob)) if blob.algorithm == "sha256" else None
        found = None if row is None else load_state(self._core.root, blob.encoded, min(upto, row[0]))
        if row is None or found is None:
            return 0
        offset, state, before = found
        pieces: list[tuple[bytes, int]] = []
        pos = 0
        for key, length in decode_recipe(row[1]):
            if pos >= offset:
                break
            pieces.append((key, length))
            pos += length
        self._hasher = Sha256(offset=offset, state=state, before=before)
        self._resumed = Resumed(str(blob), offset, pieces)
        return offset

    def _blob_digest(self, expected: Digest | None) -> Digest:
        """The blob's digest. One started from a kept state is computed again from every
        byte when the blob does not begin with the pieces that state stands for, when it
        is not ``expected`` (a damaged state file costs time, not a false failure), or
        when nothing is expected (nothing else would check the state)."""
        actual = Digest(self.algorithm, self._hasher.hexdigest())
        resumed = self._resumed
        if resumed is None:
            return actual
        if (expected is None or actual != expected
                or self._recipe[:len(resumed.pieces)] != resumed.pieces):
            self._resumed = None
            return self._rehash(self.algorithm)
        return actual

    def _rehash(self, algorithm: str) -> Digest:
        if self._writer is not None:
            self._writer.sync()  # our pieces are readable once synced
        h = new_state_hasher(algorithm, self._core.digest_states)
        for key, _ in self._recipe:
            h.update(self._read_own(key))
        if algorithm == self.algorithm:
            self._hasher = h
        return Digest(algorithm, h.hexdigest())

    def _read_own(self, key: bytes) -> bytes:
        loc = self._new.get(key)
        if loc is None:
            loc = self._core.meta.locations([key])[key]
        return self._core.load(loc)

    def _keep_states(self, digest: str) -> None:
        """Keep the committed blob's SHA-256 states, if the store keeps them (best effort)."""
        algorithm, _, encoded = digest.partition(":")
        if isinstance(self._hasher, Sha256) and algorithm == "sha256":
            with contextlib.suppress(OSError):
                save_states(self._core.root, encoded, self._hasher.states)

    def _hash_locations(self, locs: list[Location]) -> None:
        """Feed the pieces' bytes to the digest, in runs (:func:`~cas.pack_reads.hash_locations`)."""
        try:
            hash_locations(self._core, self._hasher, locs)
        except StoreCorrupt as exc:
            raise StoreCorrupt(f"ingest {self.id}: {exc}") from exc
