"""Assembling a blob from whole pieces and a known recipe (a piece-level push).

A :class:`PieceIngest` is an open ingest like any other (a row in the metadata: GC
keeps every piece it holds, ``Store.expire_ingests`` ends it when idle, and
``Store.resume_piece_ingest`` reopens it after a restart), but its bytes arrive as
whole pieces, each with the BLAKE3 key its sender claims, in any order:

- :meth:`PieceIngest.add_pieces` checks every piece against its key (a mismatch stores
  nothing of the call) and stores them as an ingest stores the pieces it cuts
  (:mod:`cas.ingest_pieces`: a piece the store has is held, not written again), then
  checkpoints: what a call stored survives a crash;
- :meth:`PieceIngest.commit_recipe` makes the blob of a recipe (keys and lengths, in
  blob order) visible. Each piece must be one this ingest received, or a committed
  piece the caller vouches for (``known``: a registry passes the pieces of blobs the
  client may read); it is then held, so GC cannot take it before the commit. The pieces
  are read in order, in runs (:mod:`cas.pack_reads`), and hashed (the OCI digest,
  streaming, on a worker thread); only the expected digest commits, and nothing is cut
  again or written again. A wrong digest aborts the ingest: nothing of it becomes visible;
- :meth:`PieceIngest.expect` tells the ingest the recipe its commit will likely name (a
  registry calls it when the client states its plan), with the committed pieces the
  caller vouches for: the ingest starts hashing it in the background, in blob order, as
  far as the pieces it holds go, and goes on as the missing ones arrive. A commit of that
  same recipe then only hashes what is left (every check of the commit is made as
  before: the pieces are held, their lengths checked, and the same ``known`` rule
  applies to the commit's own ``known``). The prefix is a hint of no authority: a commit
  of another recipe, or a prefix whose reading failed (a piece gone meanwhile), hashes
  the whole blob anew.

A store that keeps SHA-256 states (``StoreConfig.digest_states``, :mod:`cas.digest_states`)
keeps them for the blobs a piece ingest commits too, and :meth:`PieceIngest.expect` takes
``bases``: committed blobs the caller vouches for (a registry passes only the bases the
client may pull). When the expected recipe begins with the first pieces of one of them
(compared with the base's recipe in the metadata, never with what a client claims), the
background hash starts from that base's last kept state inside the shared pieces
(:attr:`PieceIngest.resumed_offset`): those bytes are neither read nor hashed. The
commit checks the claim as :mod:`cas.ingest_assembly` does: when its recipe does not
begin with the pieces the state stands for, or the digest is not the expected one, the
whole blob is hashed again from its pieces before anything is decided (a damaged or
wrong state costs time, never a false failure nor a wrong blob). A state changes how
long a hash takes, never what any call answers.

There is no cutter and no tail file: a checkpoint is the pack's sync and the pieces'
rows (``offset`` counts the bytes received).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, TypeVar

import blake3

from .assemble_ranges import PieceRanges
from .blobs import BlobInfo
from .digest import Digest
from .digest_states import Sha256, new_state_hasher, save_states
from .errors import CasError, DigestMismatch, IngestUnknown
from .ingest_assembly import Resumed
from .pack_reads import hash_locations, prefetch_locations
from .prehash import Prehash as _Prehash
from .prehash import feed, resume_from_base

if TYPE_CHECKING:
    import zstandard

    from .core import StoreCore
    from .digest import Hasher
    from .meta import IngestRow, Location
    from .packs import PackWriter

__all__ = ["PieceIngest", "PieceMismatch", "PiecesMissing", "RecipeInvalid"]

T = TypeVar("T")

# A background hash step reads at most this much before it looks again at what arrived
# (and whether the commit wants the hasher).
_STEP_BYTES = 8 << 20
# A background hash waiting for pieces gives up after this long without any arriving
# (a client gone; the commit, if it comes, hashes the rest).
_IDLE = 120.0


class PieceMismatch(CasError):
    """A piece's bytes do not hash to the key sent with them; nothing of the call was kept."""

    def __init__(self, index: int, claimed: str, actual: str) -> None:
        super().__init__(
            f"piece {index} of the request hashes to {actual}, not {claimed}; nothing of "
            "the request was stored - send the piece's exact bytes"
        )
        self.index, self.claimed, self.actual = index, claimed, actual


class PiecesMissing(CasError):
    """Pieces of a recipe that are neither received nor vouched for (``indices``, in
    recipe order); the ingest stays open: send them, then commit again."""

    def __init__(self, indices: list[int]) -> None:
        shown = ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")
        super().__init__(
            f"{len(indices)} piece(s) of the recipe were not received (indices {shown}); "
            "send them, then commit again"
        )
        self.indices = indices


class RecipeInvalid(CasError, ValueError):
    """A recipe that cannot describe a blob (a piece of another length than stored)."""


class _Whole:
    """Stands in for the cutter :class:`IngestPieces` asks: pieces arrive whole, and
    whether one is worth compressing is probed piece by piece."""

    compressed = False


class PieceIngest(PieceRanges):
    """An open ingest fed with whole pieces (see the module docstring). Calls are
    serialised; use from one event loop."""

    def __init__(self, core: StoreCore, ingest_id: str, algorithm: str) -> None:
        self._core = core
        self.id = ingest_id
        self.algorithm = algorithm
        self.offset = 0  # bytes received
        self._cutter = _Whole()  # type: ignore[assignment]
        self._seq = 0
        self._recipe: list[tuple[bytes, int]] = []
        self._new: dict[bytes, Location] = {}
        self._held: set[bytes] = set()
        self._unsaved: list[tuple[int, bytes, int, Location | None]] = []
        self._writer: PackWriter | None = None
        self._zprobe: zstandard.ZstdCompressor | None = None
        self._zstd: zstandard.ZstdCompressor | None = None
        self._pack: tuple[str, int] | None = None  # the pack to reopen, and its size
        self._lock = asyncio.Lock()
        self._closed = False
        self._pre: _Prehash | None = None
        #: Bytes of the expected blob the background hash took from a base's kept
        #: SHA-256 state instead of reading them (0: none; see the module docstring).
        self.resumed_offset = 0
        #: Commits whose digest was computed again from every byte after a resumed hash
        #: (a state that did not hold, or a digest other than expected).
        self.rehashed = 0

    @classmethod
    async def resume(cls, core: StoreCore, row: IngestRow) -> PieceIngest:
        """The ingest of ``row`` as of its last checkpoint (nothing is re-read)."""
        ing = cls(core, row.id, row.algorithm)
        await core.run(ing._restore, row)
        return ing

    @property
    def closed(self) -> bool:
        """True once committed or aborted: every call then raises IngestUnknown."""
        return self._closed

    @property
    def hashed_ahead(self) -> int:
        """Pieces of the recipe given to :meth:`expect` hashed so far (0 without one)."""
        pre = self._pre
        return 0 if pre is None or pre.failed else pre.done

    def keys(self) -> set[str]:
        """The BLAKE3 keys (hex) of every piece received so far."""
        return {k.hex() for k in (*self._new, *self._held)}

    async def add_pieces(self, pieces: list[tuple[str, bytes | bytearray | memoryview]]) -> None:
        """Store ``(key, bytes)`` pieces, each checked against its key first (one wrong
        key: :class:`PieceMismatch`, nothing stored, the ingest stays usable), then
        checkpoint. A failure of the store aborts the ingest."""
        async with self._lock:
            self._check_open()
            try:
                await self._job(self._add_sync, pieces)
            except (PieceMismatch, asyncio.CancelledError):
                raise
            except BaseException:
                await self._abort_locked()
                raise
        if self._pre is not None:
            self._pre.arrived.set()

    async def expect(self, recipe: list[tuple[str, int]], known: AbstractSet[str] = frozenset(),
                     bases: Sequence[Digest] = ()) -> None:
        """Start hashing ``recipe`` in the background (module docstring): the pieces this
        ingest received and the committed pieces of ``known`` (BLAKE3 hex keys the caller
        vouches for, as for :meth:`commit_recipe`), in order, as far as they go; the rest
        as it arrives. When the store keeps SHA-256 states and ``recipe`` begins with the
        first pieces of one of ``bases`` (committed blobs the caller vouches for), the
        hash starts from that blob's last kept state inside them. The same recipe again
        keeps the hash under way; another replaces it."""
        if self._closed:
            return
        raw = [(bytes.fromhex(k), n) for k, n in recipe]
        if self._pre is not None:
            if self._pre.recipe == raw and not self._pre.failed:
                return
            await self._stop_prehash()
        wanted = {k for k, _ in raw}
        pre = _Prehash(raw, frozenset(k for k in wanted if k.hex() in known),
                       self._new_hasher(self.algorithm), bases)
        self.resumed_offset = 0
        self._pre = pre
        pre.task = asyncio.create_task(self._prehash(pre))

    async def park(self) -> None:
        """Nothing to give back: every call ends checkpointed, with no buffers held."""
        self._check_open()

    async def checkpoint(self) -> None:
        self._check_open()

    async def commit_recipe(self, expected: Digest, recipe: list[tuple[str, int]], *,
                            known: AbstractSet[str] = frozenset(),
                            link: str | None = None, link_own: str | None = None,
                            ranges: Mapping[str, tuple[Digest, int, int]] | None = None,
                            ) -> BlobInfo:
        """Make the blob ``recipe`` (``(key hex, length)`` in blob order) describes
        visible as ``expected``, linked to ``link`` (``link_own``: see
        ``IngestPieces._commit_blob``); see the module docstring.

        ``ranges`` says, for keys of ``known``, where their bytes lie in a committed blob
        (``(digest, offset, length)``): a key the store does not hold as a piece (it
        keeps that blob cut otherwise) is then read from there, checked against its key
        and stored as a piece of this ingest, after every other check of the commit
        passed. So the commit answers as it would if the store held that piece.

        :class:`PiecesMissing` and :class:`RecipeInvalid` leave the ingest open (with
        nothing of ``ranges`` stored); :class:`DigestMismatch` (and any failure of the
        store) aborts it."""
        pre = await self._stop_prehash()
        async with self._lock:
            self._check_open()
            try:
                return await self._job(self._commit_sync, expected, recipe, known, (link, link_own),
                                       pre, ranges or {})
            except (PiecesMissing, RecipeInvalid, asyncio.CancelledError):
                raise
            except BaseException:
                await self._abort_locked()
                raise

    async def abort(self) -> None:
        async with self._lock:
            if not self._closed:
                await self._abort_locked()

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise IngestUnknown(self.id)

    async def _job(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` on a worker thread; a cancelled caller still waits for it to end (the
        lock is held: no other job of this ingest may start while it runs)."""
        job = asyncio.ensure_future(self._core.run(fn, *args))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await job
            raise

    async def _abort_locked(self) -> None:
        self._closed = True
        if self._pre is not None:  # it sees the ingest closed and ends
            self._pre.stop = True
            self._pre.arrived.set()
        await self._core.run(self._abort_sync)

    async def _stop_prehash(self) -> _Prehash | None:
        """End the background hash (after the step under way) and take it over: None
        when there is none or it is of no use."""
        pre, self._pre = self._pre, None
        if pre is None:
            return None
        pre.stop = True
        pre.arrived.set()
        if pre.task is not None:
            if not pre.stepping:  # waiting (for pieces, or its turn): nothing under way
                pre.task.cancel()
            await asyncio.gather(pre.task, return_exceptions=True)
        return None if pre.failed else pre

    async def _prehash(self, pre: _Prehash) -> None:
        """Hash ``pre.recipe`` as far as the pieces go, step by step, until it is all
        hashed, stopped, the ingest closes, or nothing arrives for :data:`_IDLE` seconds."""
        try:
            async with self._core.background:
                if pre.stop:
                    return
                # Where the committed pieces are, asked once. (Each step asks the disk for
                # its own pieces only: a deeper queue of reads would hold up the syncs
                # of the pieces being received.) First, a base's kept state to start from
                # (a step too: a commit waits for it rather than race it).
                pre.stepping = True
                try:
                    await self._core.run(self._start_sync, pre)
                finally:
                    pre.stepping = False
            while not pre.stop and pre.done < len(pre.recipe):
                pre.arrived.clear()
                async with self._lock:  # a view of the received pieces between calls
                    if self._closed or pre.stop:
                        return
                    step: list[tuple[bytes, int]] = []
                    size = 0
                    for key, n in pre.recipe[pre.done:]:
                        if key not in self._new and key not in self._held and key not in pre.known:
                            break
                        if step and size + n > _STEP_BYTES:
                            break
                        step.append((key, n))
                        size += n
                    received = {k: self._new[k] for k, _ in step if k in self._new}
                if not step:
                    try:
                        await asyncio.wait_for(pre.arrived.wait(), _IDLE)
                    except TimeoutError:
                        return  # what is hashed stays of use to a commit
                    continue
                async with self._core.background:
                    if pre.stop:
                        return
                    pre.stepping = True
                    try:
                        await self._core.run(self._prehash_step, pre, step, received)
                    finally:
                        pre.stepping = False
        except asyncio.CancelledError:
            if pre.stepping:
                pre.failed = True  # the step may still be feeding the hasher
            raise
        except Exception:  # a hint only: the commit hashes anew
            pre.failed = True

    def _new_hasher(self, algorithm: str) -> Hasher:
        return new_state_hasher(algorithm, self._core.digest_states)

    def _start_sync(self, pre: _Prehash) -> None:
        with contextlib.suppress(CasError, OSError, ValueError):  # a hint only
            offset = resume_from_base(self._core, pre)
            if offset:
                self.resumed_offset = offset
        pre.located = self._core.meta.locations(pre.known)

    def _prehash_step(self, pre: _Prehash, step: list[tuple[bytes, int]],
                      received: dict[bytes, Location]) -> None:
        locs = dict(received)
        others = {k for k, _ in step if k not in locs and k not in pre.located}
        if others:
            locs.update(self._core.meta.locations(others))
        locs.update((k, pre.located[k]) for k, _ in step if k not in locs and k in pre.located)
        if any(k not in locs or locs[k].length != n for k, n in step):
            pre.failed = True  # a piece gone, or not what the recipe says: the commit decides
            return
        ordered = [locs[k] for k, _ in step]
        prefetch_locations(self._core, ordered)
        try:
            feed(self._core, pre.hasher, ordered, pre.skip)
        except BaseException:
            pre.failed = True  # part of the step may be in the hasher
            raise
        pre.done += len(step)
        pre.skip = 0

    def _abort_sync(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        with contextlib.suppress(CasError):  # a full disk: expiry or GC removes it later
            self._core.drop_ingest(self.id)

    def _restore(self, row: IngestRow) -> None:
        meta = self._core.meta
        meta.rewind_ingest(self.id)
        for _, loc in meta.ingest_recipe(self.id):
            if loc.stored < 0:
                self._held.add(loc.key)
            else:
                self._new[loc.key] = loc
        self._seq = row.npieces
        self.offset = row.offset
        if row.pack is not None:
            self._pack = (row.pack, row.pack_size)

    def _add_sync(self, pieces: list[tuple[str, bytes | bytearray | memoryview]]) -> None:
        for i, (key, data) in enumerate(pieces):
            actual = blake3.blake3(data).hexdigest()
            if actual != key:
                raise PieceMismatch(i, key, actual)
        # A piece sent again (in this batch or an earlier one) adds no bytes: what the
        # session holds, and the upload limits that count them, grow only by new pieces.
        known, received = set(), 0
        for key, data in pieces:
            raw = bytes.fromhex(key)
            if raw not in known and raw not in self._new and raw not in self._held:
                known.add(raw)
                received += len(data)
        self._store_checkpointed([memoryview(d) for _, d in pieces], received)

    def _commit_sync(self, expected: Digest, recipe: list[tuple[str, int]], known: AbstractSet[str],
                     links: tuple[str | None, str | None], pre: _Prehash | None = None,
                     ranges: Mapping[str, tuple[Digest, int, int]] | None = None) -> BlobInfo:
        meta = self._core.meta
        raw = [(bytes.fromhex(k), n) for k, n in recipe]
        outside = [(i, k) for i, (k, _) in enumerate(raw) if k not in self._new and k not in self._held]
        missing = [i for i, k in outside if k.hex() not in known]
        if missing:
            raise PiecesMissing(missing)
        wanted = list(dict.fromkeys(k for _, k in outside))
        locs: dict[bytes, Location] = {}
        if wanted:
            # Held from here on: GC cannot take them before the commit. The caller vouches
            # for them as pieces of committed blobs: no look beforehand.
            locs = meta.hold_existing(self.id, [(self._seq + j, k) for j, k in enumerate(wanted)],
                                      expected=True)
            self._seq += len(wanted)
            self._held.update(locs)
            gone = [i for i, k in outside if k not in locs and k.hex() not in (ranges or {})]
            if gone:
                raise PiecesMissing(gone)
        # Known pieces to read from a blob's bytes: stored once every check passed.
        cut = {k: (ranges or {})[k.hex()] for _, k in outside if k not in locs}
        # Pieces received that the store had already (held when they arrived).
        again = {k for k, _ in raw if k not in self._new and k not in locs and k not in cut}
        if again:
            locs.update(meta.locations(again))
        locs.update(self._new)
        for i, (k, n) in enumerate(raw):
            length = cut[k][2] if k in cut else locs[k].length
            if length != n:
                raise RecipeInvalid(f"piece {i} ({k.hex()}) is {length} bytes, the recipe says {n}")
        if cut:
            locs.update(self._store_ranges(cut))
            missing = [i for i, (k, _) in enumerate(raw) if k not in locs]
            if missing:  # the blob read from went meanwhile (GC): as a piece gone would
                raise PiecesMissing(missing)
        # The background hash of this very recipe, when there is one, has fed the first
        # ``pre.done`` pieces to its hasher (or started from a kept state that stands
        # for them): only the rest is read here.
        start = skip = 0
        resumed: Resumed | None = None
        hasher = self._new_hasher(expected.algorithm)
        if pre is not None and pre.recipe == raw and self.algorithm == expected.algorithm:
            hasher, start, skip, resumed = pre.hasher, pre.done, pre.skip, pre.resumed
        rest = [locs[k] for k, _ in raw[start:]]
        prefetch_locations(self._core, rest)
        feed(self._core, hasher, rest, skip)
        actual = Digest(expected.algorithm, hasher.hexdigest())
        if resumed is not None and (actual != expected
                                    or raw[:len(resumed.pieces)] != resumed.pieces):
            # The state did not hold (or the digest is wrong): every byte, before deciding.
            self.rehashed += 1
            hasher = self._new_hasher(expected.algorithm)
            every = [locs[k] for k, _ in raw]
            prefetch_locations(self._core, every)
            hash_locations(self._core, hasher, every)
            actual = Digest(expected.algorithm, hasher.hexdigest())
        if actual != expected:
            raise DigestMismatch(expected, actual)
        size = sum(n for _, n in raw)
        # Every piece received is committed (those the recipe does not name with no
        # reference: GC frees them), so no dead range stays behind in the pack.
        linked, own = self._commit_blob(str(actual), size, raw, *links)
        self._closed = True
        if isinstance(hasher, Sha256) and actual.algorithm == "sha256":
            with contextlib.suppress(OSError):  # best effort: without them, hashed in full
                save_states(self._core.root, actual.encoded, hasher.states)
        self._core.empty_trash()
        return BlobInfo(actual, size, own, linked)
