"""Ingest: checkpoints, parking and resuming.

A checkpoint makes an ingest's progress durable: its pack is synced, the bytes the
cutter still holds back (its *tail*, at most one piece) are written to a *tail file*
named by the checkpoint's offset, ``<storage>/ingests/<id>.<offset>.tail``, and then the
metadata records the new pieces and the offset, so a crash between the two leaves the
previous checkpoint intact. A shared store (packs in S3, metadata in PostgreSQL) keeps
the tail in the metadata instead, in the checkpoint's own transaction, so any replica
resumes the ingest (:meth:`cas.core.StoreCore.checkpoint`). Parking checkpoints and
then gives back every buffer (the next call reloads the tail). Resuming rebuilds an ingest's state
from its last checkpoint, also after a restart or a crash: its pieces are re-read and
re-cut, so the hash and the cutter continue where they were.

:class:`IngestCheckpoints` is this part of :class:`~cas.ingest.Ingest` (its base class);
its methods run on worker threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import StoreCorrupt
from .ingest_pieces import IngestPieces

if TYPE_CHECKING:
    from .digest import Hasher

__all__ = ["IngestCheckpoints"]


class IngestCheckpoints(IngestPieces):
    """Checkpoint, park, unpark and restore of an :class:`~cas.ingest.Ingest`, which sets
    these attributes."""

    offset: int  # bytes received
    _hasher: Hasher
    _checkpointed: int  # the offset of the last checkpoint (-1: none yet)
    _tail_len: int  # the length of that checkpoint's tail
    _parked: bool
    _parked_pack: tuple[str, int] | None  # the pack to reopen and its size, if any
    # Where the last checkpoint's tail also lies in the pack, (pack, offset, length, known),
    # when it was sealed there with the pieces before it (packs in S3); else None.
    # ``known``: sealed by this object; else the bytes there are compared before use.
    _tail_at: tuple[str, int, int, bool] | None = None

    def _checkpoint_sync(self) -> None:
        # Store every piece that is already final, so the tail file stays small (at
        # most one piece) instead of holding up to a whole gather buffer.
        final = self._cutter.flush()
        if final:
            self._store_pieces(final)
        tail = bytes(self._cutter.held())
        since = self.offset - max(self._checkpointed, 0)  # bytes this checkpoint makes durable
        if since:  # else the last checkpoint's tail (sealed or not) is this one's
            self._tail_at = None
        if self._writer is not None:
            if tail and self._core.remote is not None and since >= 4 * len(tail):
                # Sealed with the pieces before it, as the blob's last pieces will be if
                # no more bytes come (docker, skopeo and podman send a layer in one PATCH,
                # then a PUT without a body): the commit then records them here instead
                # of sealing a second object, and the blob stays one object in the
                # bucket, which a GET can be redirected to. Dead bytes when more come,
                # so only after four times as many bytes: a client that sends many small
                # chunks leaves no pile of copies (at most a fifth of what it sent).
                self._tail_at = (self._writer.name, self._writer.append(tail), len(tail), True)
            self._writer.sync()
        self._core.checkpoint(self.id, self._unsaved, self.offset, self._seq,
                              self._writer.size if self._writer else 0, tail)
        self._unsaved = []
        self._checkpointed = self.offset
        self._tail_len = len(tail)

    def _park_sync(self) -> None:
        if self._checkpointed != self.offset or self._unsaved:
            self._checkpoint_sync()
        # The bytes the cutter holds back are those of the tail file just written.
        self._cutter.suspend()
        if self._writer is not None:
            self._parked_pack = (self._writer.name, self._writer.size)
            self._writer.close()
            self._writer = None
        self._zprobe = self._zstd = None
        self._parked = True

    def _unpark_sync(self) -> None:
        tail = self._core.read_tail(self.id, self._checkpointed, self._tail_len)
        if self._parked_pack is not None:
            self._writer = self._core.packs.open_append(*self._parked_pack)
            self._parked_pack = None
        self._cutter.resume(tail)
        self._parked = False

    def _sealed_tail(self, pieces: list[memoryview]) -> tuple[str, int] | None:
        """Where the last checkpoint sealed ``pieces`` (the cutter's last pieces, cut from
        its tail), as (pack, offset), when no byte came since; else None."""
        at = self._tail_at
        if (at is None or self.offset != self._checkpointed or self._writer is None
                or self._writer.name != at[0] or sum(len(p) for p in pieces) != at[2]):
            return None
        pack, offset, length, known = at
        if not known:  # resumed from the metadata: is the tail there (a checkpoint's)?
            try:
                there = memoryview(self._core.packs.read(pack, offset, length))
            except (OSError, StoreCorrupt):
                return None
            pos = 0
            for p in pieces:
                if there[pos : pos + len(p)] != p:
                    return None
                pos += len(p)
        return pack, offset

    def _restore(self, offset: int, npieces: int, pack: str | None, pack_size: int,
                 tail_len: int) -> None:
        """Rebuild the state of the last checkpoint (runs in a worker thread)."""
        meta = self._core.meta
        meta.rewind_ingest(self.id)
        rows = meta.ingest_recipe(self.id)
        if len(rows) != npieces:
            raise StoreCorrupt(f"ingest {self.id} has {len(rows)} of {npieces} pieces recorded")
        held_keys = [loc.key for _, loc in rows if loc.stored < 0]
        held_locs = meta.locations(held_keys)
        tail = self._core.read_tail(self.id, offset, tail_len)
        if pack is not None:
            self._writer = self._core.packs.open_append(pack, pack_size)
        step = self._cutter.max_feed
        emitted = 0
        self._seq = npieces

        def take(pieces: list[memoryview]) -> None:
            # The first npieces pieces are the recorded ones; cutting may now release
            # more (it drains at other moments than before): those are new.
            nonlocal emitted
            skip = max(0, min(len(pieces), npieces - emitted))
            emitted += len(pieces)
            if pieces[skip:]:
                self._store_pieces(pieces[skip:])

        def refeed(data: bytes) -> None:
            self._hasher.update(data)
            for i in range(0, len(data), step):
                take(self._cutter.feed(memoryview(data)[i : i + step]))

        for _seq, loc in rows:
            if loc.stored < 0:
                real = held_locs.get(loc.key)
                if real is None:
                    raise StoreCorrupt(f"ingest {self.id}: held piece {loc.key.hex()} is gone")
                self._held.add(loc.key)
                refeed(self._core.load(real))
            else:
                self._new[loc.key] = loc
                refeed(self._core.load(loc))
            self._recipe.append((loc.key, loc.length))
        refeed(tail)
        take(self._cutter.flush())
        if emitted < npieces:
            raise StoreCorrupt(f"ingest {self.id}: re-cutting did not reproduce its pieces")
        self.offset = offset
        self._checkpointed = offset
        self._tail_len = tail_len
        if pack is not None and tail_len and self._core.remote is not None and pack_size >= tail_len:
            # A checkpoint in S3 seals its tail last (see _checkpoint_sync): checked at use.
            self._tail_at = (pack, pack_size - tail_len, tail_len, False)

