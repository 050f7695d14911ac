"""Ingest: a stream of bytes becoming a blob, in bounded memory.

Bytes are hashed (the OCI digest) and cut into pieces (BLAKE3 keys) in worker threads,
in parallel with each other and with the caller's next writes; pieces the store already
has are not written again; new ones are appended to this ingest's pack. Nothing is
visible until :meth:`Ingest.commit` has verified the digest (and size) and committed
the recipe in one metadata transaction.

:meth:`Ingest.checkpoint` makes the progress durable: after a crash or restart,
``Store.resume_ingest(id)`` continues at the checkpointed offset. :meth:`Ingest.park`
checkpoints and then gives back every buffer the ingest holds (cutter buffer, pack
writer and its staging buffers, compression contexts): an ingest that waits for more
bytes (an idle upload session) holds only its hash state and piece list; the next call
takes the buffers again and reloads the held-back bytes from the tail file. The bytes the cutter
still holds back (at most a few MiB) are kept in a *tail file* named by the checkpoint's
offset, ``<storage>/ingests/<id>.<offset>.tail``, written before the metadata that refers
to it, so a crash between the two leaves the previous checkpoint intact; a shared store
(packs in S3, metadata in PostgreSQL) keeps them in the metadata (``cas.ingest_checkpoints``).

An ingest works on the store's :class:`~cas.core.StoreCore` (its metadata, packs, worker
threads and tail files), not on the :class:`~cas.store.Store` that made it.

This module holds :class:`Ingest`'s calls and the worker-thread jobs that feed its
bytes to the hash and the cutter; its base classes hold the rest, one concern each:
storing the pieces (``cas.ingest_pieces``: keying, deduplication, compression, inline
or packed) and checkpoints, parking and resuming (``cas.ingest_checkpoints``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

import zstandard

from .blobs import BlobInfo, IngestInfo
from .chain import JobChain, outlast
from .chunker import Cutter
from .digest import Digest, Hasher
from .digest_states import Sha256, new_state_hasher
from .errors import (
    DigestMismatch,
    IngestUnknown,
    SizeMismatch,
    StorageError,
    mapped_error,
)
from .ingest_assembly import IngestAssembly, PieceMissing, Resumed
from .ingest_pieces import INLINE_MAX
from .meta import IngestRow, Location

if TYPE_CHECKING:
    from .core import StoreCore
    from .packs import PackWriter

__all__ = ["INLINE_MAX", "Ingest", "IngestInfo", "PieceMissing", "SourceFailed"]

T = TypeVar("T")

# Hand bytes to the worker threads in batches this large: a thread hop per network
# read (64 KiB) would cost more than the hashing.
_BATCH = 4 << 20
# Batches handed over but not yet hashed and stored. write() waits beyond this, which
# bounds an ingest's memory to about (_DEPTH + 1) * _BATCH plus the cutter's buffer.
_DEPTH = 2
# Ingest.receive asks its source for at most this much at a time.
_RECEIVE = 1 << 20


class SourceFailed(Exception):
    """What the source of :meth:`Ingest.receive` raised (``__cause__``); the ingest holds
    every byte before the failure and stays usable."""


class Ingest(IngestAssembly):
    """One open ingest. Use from one task at a time (calls are serialised anyway)."""

    def __init__(self, core: StoreCore, ingest_id: str, algorithm: str) -> None:
        """A new ingest on ``core`` (its metadata row made by the caller, see
        ``Store.begin_ingest``); :meth:`resume` reopens one at its checkpoint."""
        self._core = core
        self.id = ingest_id
        self.algorithm = algorithm
        self.offset = 0  # bytes received
        self._hasher: Hasher = new_state_hasher(algorithm, core.digest_states)
        self._resumed: Resumed | None = None  # the digest started from a kept state
        self._cutter = Cutter(core.chunk_params)
        self._lock = asyncio.Lock()
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._seq = 0  # pieces cut so far
        self._recipe: list[tuple[bytes, int]] = []
        self._new: dict[bytes, Location] = {}  # pieces this ingest wrote
        self._held: set[bytes] = set()  # committed pieces it reuses
        self._within: dict[str, set[tuple[bytes, int]]] = {}  # reuse_pieces' within: pieces
        self._linked: set[str] = set()  # those blobs held by a link
        self._unsaved: list[tuple[int, bytes, int, Location | None]] = []
        self._writer: PackWriter | None = None
        self._closed = False
        self._assembled = False  # fed whole pieces (cas.ingest_assembly), not bytes
        # Compression contexts (~1.2 MiB once used): made on first use, dropped by park().
        self._zprobe: zstandard.ZstdCompressor | None = None
        self._zstd: zstandard.ZstdCompressor | None = None
        self._checkpointed = -1  # the offset of the last checkpoint (-1: none yet)
        self._tail_len = 0
        # Parked (see park()): no buffers; the pack to reopen and its size, if any.
        self._parked = False
        self._parked_pack: tuple[str, int] | None = None
        # The two chains of worker-thread jobs (see _flush) and the jobs of each batch
        # not yet waited for.
        self._hashing = JobChain(core.pool)
        self._cutting = JobChain(core.pool)
        self._inflight: deque[tuple[asyncio.Future[None], ...]] = deque()

    @classmethod
    async def resume(cls, core: StoreCore, row: IngestRow) -> Ingest:
        """The ingest of ``row`` as of its last checkpoint (also after a restart or a
        crash): its pieces re-read and re-cut on a worker thread."""
        ing = cls(core, row.id, row.algorithm)
        await core.run(ing._restore, row.offset, row.npieces, row.pack, row.pack_size, row.tail_len)
        return ing

    # -- public --------------------------------------------------------------------

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``. Hashing, cutting and writing run in worker threads."""
        async with self._lock:
            self._check_open()
            self._check_mode(assembled=False)
            if not data:
                return
            self._pending.append(bytes(data) if not isinstance(data, bytes) else data)
            self._pending_len += len(data)
            self.offset += len(data)
            if self._pending_len >= _BATCH:
                try:
                    await self._flush()
                except asyncio.CancelledError:
                    # Not a failure: the batch is in the chains and the ingest stays usable
                    # (a caller that stops a transfer may still checkpoint it for a resume).
                    raise
                except BaseException:
                    # A failed write (full disk, I/O error) ends the ingest: nothing partial stays.
                    await self._abort_locked()
                    raise

    async def receive(self, fill: Callable[[memoryview], int], limit: int,
                      interrupt: Callable[[], None] | None = None) -> int:
        """Let a thread fill the ingest from a blocking source: ``fill(view)`` writes up
        to ``len(view)`` bytes into ``view`` and returns how many (0: the source ended).
        Stops after ``limit`` bytes; returns the bytes taken.

        The views are the cutter's own buffer, so a socket's ``recv_into`` puts a body
        where it is cut, with no copy in between; the same thread hashes, cuts and
        stores each read while it is in the CPU's cache, and holds the GIL only between
        those calls, so receives of several blobs run on several cores.

        A failure of ``fill`` raises :class:`SourceFailed` (from it) and keeps the
        ingest usable, as a cancellation does; ``interrupt`` (if given) is called from
        the event loop when the caller is cancelled, to wake a ``fill`` blocked on its
        source (shut its socket down). A failure of the store ends the ingest."""
        async with self._lock:
            self._check_open()
            self._check_mode(assembled=False)
            try:
                await self._flush()
                await self._settle(len(self._inflight))
                return await self._run(self._receive_sync, fill, limit,
                                       pool=self._core.receiver_pool(), interrupt=interrupt)
            except (asyncio.CancelledError, SourceFailed):
                raise
            except BaseException:
                await self._abort_locked()
                raise

    async def checkpoint(self) -> None:
        """Make everything written so far durable; a restart resumes at :attr:`offset`."""
        async with self._lock:
            self._check_open()
            self._check_mode(assembled=False)
            await self._flush()
            await self._settle(len(self._inflight))
            await self._run(self._checkpoint_sync)

    async def park(self) -> None:
        """Checkpoint, then give back every buffer (see the module docstring); the
        ingest stays open and any later call takes them again. Cheap when parked."""
        async with self._lock:
            self._check_open()
            self._check_mode(assembled=False)
            if self._parked and not self._pending:
                return
            await self._flush()
            await self._settle(len(self._inflight))
            await self._run(self._park_sync)

    async def append_pieces(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Append ``pieces``, each stored whole as one piece (see
        :mod:`cas.ingest_assembly`). They are read after the call returns: leave them
        unchanged."""
        async with self._lock:
            self._begin_assembly()
            await self._queue_assembly(self._append_sync, list(pieces),
                                       sum(len(p) for p in pieces))

    async def hash_from(self, blob: Digest, upto: int) -> int:
        """Before any piece: the pieces to come begin as those of the committed ``blob``,
        up to byte ``upto``. The digest then starts from ``blob``'s last kept state at or
        before ``upto`` (:mod:`cas.digest_states`): bytes before it are not read again.
        Returns that state's offset (0: none kept). The commit checks the claim."""
        async with self._lock:
            self._begin_assembly()
            if self.offset or not isinstance(self._hasher, Sha256):
                return 0
            return await self._run(self._resume_sync, blob, upto)

    async def reuse_pieces(self, pieces: list[tuple[str, int]],
                           within: Sequence[Digest] = ()) -> None:
        """Append pieces the store holds, by (hex key, length): held, and read only for
        the digest. :class:`PieceMissing` (nothing appended) for one it does not hold.

        ``within``: committed blobs that the caller found the pieces in (the layers of a
        previous version). When they hold every one of the pieces, the ingest holds those
        blobs (one link each) instead of each piece (one row each, written again at the
        commit): the commit waits less behind other writers. Otherwise, or when a blob
        is gone, the pieces are held one by one."""
        raw = [(bytes.fromhex(k), n) for k, n in pieces]
        blobs = tuple(dict.fromkeys(str(d) for d in within))
        async with self._lock:
            self._begin_assembly()
            try:
                await self._settle(len(self._inflight))
            except asyncio.CancelledError:
                raise
            except BaseException:
                await self._abort_locked()
                raise
            reuse = await self._run(self._hold_sync, raw, blobs)  # PieceMissing: nothing appended
            await self._queue_assembly(self._reuse_sync, reuse, sum(n for _, n in raw))

    def _begin_assembly(self) -> None:
        self._check_open()
        if not self._assembled:
            if self.offset:
                raise ValueError(f"ingest {self.id} was fed bytes; it takes no whole pieces")
            self._assembled = True

    async def _queue_assembly(self, job: Callable[[Any], None], arg: Any, size: int) -> None:
        """``job(arg)`` on the ingest's chain, at most _DEPTH jobs in flight; a failure
        ends the ingest."""
        if not size:
            return
        self.offset += size
        self._inflight.append((self._cutting.submit(job, arg),))
        try:
            await self._settle(len(self._inflight) - _DEPTH)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await self._abort_locked()
            raise

    def _check_mode(self, assembled: bool) -> None:
        """An ingest is cut from bytes or assembled from whole pieces, never both."""
        if self._assembled and not assembled:
            raise ValueError(f"ingest {self.id} is assembled from whole pieces; "
                             "it takes no bytes and makes no checkpoints")

    @property
    def closed(self) -> bool:
        """True once committed or aborted (a failed write aborts): every call then raises
        IngestUnknown."""
        return self._closed

    @property
    def assembled(self) -> bool:
        """True once fed whole pieces (:meth:`append_pieces`, :meth:`reuse_pieces`)."""
        return self._assembled

    @property
    def parked(self) -> bool:
        """True while the ingest holds no buffers (between park() and the next call)."""
        return self._parked and not self._pending

    async def commit(self, expected: Digest | None = None, *, size: int | None = None,
                     link: str | None = None, link_own: str | None = None) -> BlobInfo:
        """Verify and make the blob visible, linked to ``link`` (``link_own``: see
        ``IngestPieces._commit_blob``). On DigestMismatch or SizeMismatch the ingest is
        aborted and nothing becomes visible. Every byte is in: a cancellation meanwhile
        is raised once the commit has ended (the blob is kept, not thrown away)."""
        return await outlast(asyncio.ensure_future(self._commit(expected, size, link, link_own)))

    async def _commit(self, expected: Digest | None, size: int | None, link: str | None,
                      link_own: str | None) -> BlobInfo:
        async with self._lock:
            self._check_open()
            try:
                await self._flush()
                await self._settle(len(self._inflight))
                actual = await self._run(self._finish_cut, expected)
            except BaseException:
                await self._abort_locked()
                raise
            try:
                if size is not None and size != self.offset:
                    raise SizeMismatch(size, self.offset)
                if expected is not None:
                    if expected.algorithm != self.algorithm:
                        actual = await self._run(self._rehash, expected.algorithm)
                    if actual != expected:
                        raise DigestMismatch(expected, actual)
            except (SizeMismatch, DigestMismatch):
                await self._abort_locked()
                raise
            try:
                linked, own = await self._run(self._commit_sync, str(actual), link, link_own)
            except BaseException:
                await self._abort_locked()
                raise
            return BlobInfo(actual, self.offset, own, linked)

    async def abort(self) -> None:
        async with self._lock:
            if not self._closed:
                await self._abort_locked()

    # -- internals -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise IngestUnknown(self.id)

    async def _run(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None,
                   interrupt: Callable[[], None] | None = None) -> T:
        """:meth:`_run_job`, with a full or unwritable file system reported as the
        store's typed StorageError."""
        try:
            return await self._run_job(fn, *args, pool=pool, interrupt=interrupt)
        except (OSError, sqlite3.Error) as exc:
            mapped = mapped_error(exc, self._core.root)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _run_job(self, fn: Callable[..., T], *args: Any, pool: Executor | None = None,
                       interrupt: Callable[[], None] | None = None) -> T:
        """Run ``fn`` on a worker thread and wait for it to end, even when the caller is
        cancelled meanwhile (the cancellation is raised once the job has ended). The
        caller holds the ingest's lock, so no other job of this ingest (a second
        checkpoint, an abort beside a commit) can start while this one still runs: an
        abort that forgot the ingest while its commit went on would leave a visible blob
        whose pieces live in a pack sent to the trash. ``interrupt`` is called at the
        first cancellation, to make a job that waits on something end sooner."""
        fut = asyncio.get_running_loop().run_in_executor(pool or self._core.pool, fn, *args)
        return await outlast(fut, interrupt)

    async def _flush(self) -> None:
        """Hand the gathered bytes to the worker threads as one batch.

        Two chains of jobs run on the worker threads, each job after the previous one of
        its chain: the OCI digest (hashlib), and the cut, keying and storing of pieces
        (pyfastcdc, blake3, zstd, pack writes). All of them release the GIL, so the two
        chains keep two cores busy while the event loop goes on receiving bytes; the
        pieces are keyed and written straight from the cutter's buffer, before its next
        feed, so no piece is copied on the way to the pack. At most _DEPTH batches are
        in flight: past that this waits for the oldest.
        """
        if self._parked:
            await self._run(self._unpark_sync)
        if self._pending:
            parts, self._pending, self._pending_len = self._pending, [], 0
            self._inflight.append((
                self._hashing.submit(self._hash_parts, parts),
                self._cutting.submit(self._cut_parts, parts),
            ))
        await self._settle(len(self._inflight) - _DEPTH)

    async def _settle(self, n: int) -> None:
        """Wait for the oldest ``n`` batches; raise the first failure among them."""
        failure: BaseException | None = None
        while n > 0 and self._inflight:
            n -= 1
            jobs = self._inflight[0]
            results = await asyncio.shield(asyncio.gather(*jobs, return_exceptions=True))
            if self._inflight and self._inflight[0] is jobs:
                self._inflight.popleft()
            failure = failure or next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            mapped = mapped_error(failure, self._core.root)
            if mapped is failure:
                raise failure
            raise mapped from failure

    async def _quiesce(self) -> None:
        """Wait until no thread works for this ingest any more; failures are ignored.

        A chain's last job ends after every earlier one, so waiting for the last of each
        chain is enough, whatever a cancelled caller left behind.
        """
        jobs = [j for batch in self._inflight for j in batch]
        jobs += [j for j in (self._hashing.last, self._cutting.last) if j is not None]
        if jobs:
            await asyncio.shield(asyncio.gather(*jobs, return_exceptions=True))
        self._inflight.clear()

    def _hash_parts(self, parts: list[bytes]) -> None:
        for p in parts:
            self._hasher.update(p)

    def _cut_parts(self, parts: list[bytes]) -> None:
        step = self._cutter.max_feed
        for p in parts:
            view = memoryview(p)
            for i in range(0, len(p), step):
                # The cutter's pieces are views of its buffer, valid until its next feed:
                # store them now.
                pieces = self._cutter.feed(view[i : i + step])
                if pieces:
                    self._store_pieces(pieces)

    def _receive_sync(self, fill: Callable[[memoryview], int], limit: int) -> int:
        got = 0
        cutter = self._cutter
        while got < limit:
            view = cutter.reserve(min(_RECEIVE, limit - got))
            try:
                n = fill(view)
            except BaseException as exc:
                raise SourceFailed(str(exc)) from exc
            if not n:
                break
            if not 0 < n <= len(view):
                raise ValueError(f"the source reported {n} bytes read into {len(view)}")
            self._hasher.update(view[:n])
            pieces = cutter.commit(n)
            if pieces:
                self._store_pieces(pieces)
            got += n
            self.offset += n
        return got

    def _finish_cut(self, expected: Digest | None) -> Digest:
        pieces = self._cutter.finish()
        if pieces:
            self._store_pieces(pieces, sealed=self._sealed_tail(pieces))
        return self._blob_digest(expected)

    def _commit_sync(self, digest: str, link: str | None, link_own: str | None
                     ) -> tuple[bool, tuple[tuple[str, int], ...] | None]:
        """Commit; whether it linked, and this ingest's own cut when the store keeps the
        blob cut otherwise."""
        if self._writer is not None:
            self._writer.sync()
        linked, own = self._commit_blob(digest, self.offset, self._recipe, link, link_own)
        self._closed = True
        self._keep_states(digest)
        self._cutter.release()
        if self._writer is not None:
            self._writer.close()
        if not self._assembled:  # an assembled ingest never wrote a tail (no checkpoints)
            self._core.drop_tails(self.id, keep=None)
        self._core.empty_trash()
        return linked, own

    async def _abort_locked(self) -> None:
        self._closed = True
        # No thread may still write to the pack; the failure that brought us here (if
        # any) is what the caller reports.
        await self._quiesce()
        await self._run(self._abort_sync)

    def _abort_sync(self) -> None:
        self._cutter.release()
        if self._writer is not None:
            self._writer.close()
        try:
            self._core.drop_ingest(self.id)
        except StorageError:
            # Nothing of it is visible; with the disk full (or read-only) even forgetting it can fail,
            # so it stays an open ingest until expire_ingests() or gc removes it.
            return
