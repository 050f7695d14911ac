"""The content-addressed store: blobs as recipes of deduplicated pieces.

On-disk layout of a store directory (``--storage DIR``)::

    DIR/
      meta.db, meta.db-wal       metadata (cas.sqlite_meta): pieces, recipes, links, ingests
      packs/<xx>/<name>.pack     piece bytes (cas.packs), one pack per ingest
      ingests/<id>.<offset>.tail bytes an open ingest holds back at its last checkpoint

(the default backends; a :class:`~cas.location.StoreConfig` may name others). Open a
store with :func:`cas.open.open_store`. A :class:`Store` is the async face of its
:class:`~cas.core.StoreCore`, which :class:`~cas.ingest.Ingest` and :mod:`cas.maintenance`
share with it.

Every public method is a coroutine; file, CPU and database work runs on the store's
worker threads, never on the event loop.

Errors of the file system under the store (full, read-only, no permission) leave every
method as :class:`StorageFull` / :class:`StorageNotWritable`, naming the path. After
:meth:`Store.close` (which waits for the work in flight) every method raises
:class:`StoreClosed`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .assemble import PieceIngest
from .blobs import BlobInfo, IngestInfo, Piece, Recipe, Segment
from .chunker import ChunkParams
from .core import StoreCore, close_synced
from .digest import DEFAULT_ALGORITHM, Digest, new_hasher
from .errors import BlobUnknown, IngestUnknown, InvalidRange, StoreCorrupt
from .ingest import Ingest
from .location import StoreConfig
from .meta import CODEC_ZSTD, Metadata, decode_recipe
from .packs import PackBackend

if TYPE_CHECKING:
    from .maintenance import FsckProgress, FsckReport, GcProgress, GcReport, Stats

__all__ = ["BlobInfo", "Piece", "Recipe", "Segment", "Store"]

T = TypeVar("T")

_READ_CHUNK = 4 << 20
# Blobs whose redirect answer a Store keeps (~200 bytes each).
_RUNS = 10_000


class Store:
    """A store directory. Open with :meth:`open` (or :func:`cas.open.open_store`), close
    with :meth:`close`. All its state is its :class:`~cas.core.StoreCore`."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        self.root = core.root
        self.meta = core.meta
        self.packs = core.packs
        self.chunk_params = core.chunk_params
        self._pool = core.pool
        self._run = core.run
        # redirect_url's answers: (digest, commit time) -> (pack, offset, length) or None.
        self._runs: OrderedDict[tuple[str, float], tuple[str, int, int] | None] = OrderedDict()
        self._runs_lock = threading.Lock()

    @classmethod
    async def open(cls, root: Path | str, *, chunk_params: ChunkParams | None = None,
                   packs: PackBackend | None = None, meta: Metadata | None = None,
                   workers: int = 8) -> Store:
        """Open (creating) the store directory ``root`` with these backends (commands
        use :func:`cas.open.open_store` and a :class:`~cas.location.StoreConfig`): its
        metadata is ``meta`` (else SQLite in ``root/meta.db``), its packs ``packs`` (else
        files in ``root/packs``). The store owns ``meta`` from here on and closes it."""
        config = StoreConfig(
            Path(root), workers=workers, chunk_params=chunk_params,
            metadata=None if meta is None else (lambda _root: meta),
            packs=None if packs is None else (lambda _root: packs),
        )
        return cls(await StoreCore.open(config))

    async def close(self) -> None:
        """Refuse new work (StoreClosed), wait for the work in flight, close the
        metadata. Closing twice is harmless."""
        await self.core.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run_outside(self, fn: Callable[..., T], *args: Any) -> T:
        """Run file work outside the store (an export's destination) on a worker: its
        errors are the destination's, not the store's."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- ingest --------------------------------------------------------------------

    async def begin_ingest(self, *, algorithm: str = DEFAULT_ALGORITHM) -> Ingest:
        return Ingest(self.core, await self._new_ingest(algorithm), algorithm)

    async def _new_ingest(self, algorithm: str) -> str:
        """Record a new ingest; its id. Cancelled meanwhile (another blob of a pull
        failed), the worker thread records it all the same and no caller holds it: it
        is dropped, not left open (its id unknown to anyone) until it expires."""
        new_hasher(algorithm)  # refuse unknown algorithms before anything is written
        ingest_id = os.urandom(16).hex()
        created = asyncio.ensure_future(self._run(self.meta.create_ingest, ingest_id, algorithm))
        try:
            await asyncio.shield(created)
        except asyncio.CancelledError:
            async def undo() -> None:
                with contextlib.suppress(Exception):
                    await created
                    await self._run(self.core.drop_ingest, ingest_id)
            await asyncio.shield(undo())
            raise
        return ingest_id

    async def resume_ingest(self, ingest_id: str) -> Ingest:
        """Reopen an ingest at its last checkpoint (also after a restart or a crash)."""
        if not ingest_id.isalnum():
            raise IngestUnknown(ingest_id)
        row = await self._run(self.meta.get_ingest, ingest_id)
        if row is None:
            raise IngestUnknown(ingest_id)
        return await Ingest.resume(self.core, row)

    async def ingest_info(self, ingest_id: str) -> IngestInfo | None:
        """An open ingest as of its last checkpoint (any process's), or None."""
        row = await self._run(self.meta.get_ingest, ingest_id)
        return None if row is None else IngestInfo(row.id, row.offset, row.algorithm, row.created, row.updated)

    async def list_ingests(self) -> list[IngestInfo]:
        rows = await self._run(self.meta.list_ingests)
        return [IngestInfo(r.id, r.offset, r.algorithm, r.created, r.updated) for r in rows]

    async def expire_ingests(self, older_than: float) -> int:
        """Abort ingests whose last checkpoint is more than ``older_than`` seconds old."""
        cutoff = time.time() - older_than
        n = 0
        for row in await self._run(self.meta.list_ingests):
            if row.updated < cutoff:
                await self._run(self.core.drop_ingest, row.id)
                n += 1
        return n

    async def begin_piece_ingest(self, *, algorithm: str = DEFAULT_ALGORITHM) -> PieceIngest:
        """An ingest fed with whole pieces and committed from a recipe
        (:mod:`cas.assemble`: a piece-level push)."""
        return PieceIngest(self.core, await self._new_ingest(algorithm), algorithm)

    async def resume_piece_ingest(self, ingest_id: str) -> PieceIngest:
        """Reopen a piece ingest at its last checkpoint (IngestUnknown if none)."""
        if not ingest_id.isalnum():
            raise IngestUnknown(ingest_id)
        row = await self._run(self.meta.get_ingest, ingest_id)
        if row is None:
            raise IngestUnknown(ingest_id)
        return await PieceIngest.resume(self.core, row)

    async def put(self, data: bytes, *, expected: Digest | None = None,
                  algorithm: str | None = None, link: str | None = None) -> BlobInfo:
        """Store ``data`` as one blob (verified against ``expected`` when given)."""
        ing = await self.begin_ingest(
            algorithm=algorithm or (expected.algorithm if expected else DEFAULT_ALGORITHM)
        )
        try:
            await ing.write(data)
        except BaseException:
            await ing.abort()
            raise
        return await ing.commit(expected, link=link)

    async def put_stream(self, chunks: AsyncIterator[bytes] | Iterable[bytes], *,
                         expected: Digest | None = None, algorithm: str | None = None,
                         size: int | None = None, link: str | None = None) -> BlobInfo:
        ing = await self.begin_ingest(
            algorithm=algorithm or (expected.algorithm if expected else DEFAULT_ALGORITHM)
        )
        try:
            if isinstance(chunks, AsyncIterable):  # has __aiter__
                async for c in chunks:
                    await ing.write(c)
            else:
                for c in chunks:
                    await ing.write(c)
        except BaseException:
            await ing.abort()
            raise
        return await ing.commit(expected, size=size, link=link)

    async def put_file(self, path: Path | str, *, expected: Digest | None = None,
                       algorithm: str | None = None, link: str | None = None) -> BlobInfo:
        ing = await self.begin_ingest(
            algorithm=algorithm or (expected.algorithm if expected else DEFAULT_ALGORITHM)
        )
        try:
            f = await self._run_outside(lambda: open(path, "rb"))  # noqa: SIM115 - closed below
            try:
                while True:
                    block = await self._run(f.read, 4 << 20)
                    if not block:
                        break
                    await ing.write(block)
            finally:
                f.close()
        except BaseException:
            await ing.abort()
            raise
        return await ing.commit(expected, link=link)

    # -- read ----------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        head = await self._run(self.meta.blob_head, str(digest))
        return None if head is None else BlobInfo(digest, head[0])

    async def recipe(self, digest: Digest) -> Recipe:
        row = await self._run(self.meta.blob, str(digest))
        if row is None:
            raise BlobUnknown(digest)
        size, packed = row
        pieces = []
        off = 0
        for key, length in decode_recipe(packed):
            pieces.append(Piece(key.hex(), off, length))
            off += length
        return Recipe(digest, size, tuple(pieces))

    async def segments(self, digest: Digest, offset: int = 0,
                       length: int | None = None) -> AsyncIterator[Segment]:
        """The blob's bytes ``[offset, offset+length)`` as segments, in order. Contiguous
        raw pieces of one pack are merged, so a fresh blob is usually one segment."""
        remote = self.core.remote
        if remote is not None:
            # Packs in S3: cached pieces from local files, the rest fetched ahead.
            refined = await self._run(lambda: remote.refine(self._plan(digest, offset, length)))
            async for seg in remote.stream(refined):
                yield seg
            return
        plan = await self._run(self._plan, digest, offset, length)
        for item in plan:
            if isinstance(item, Segment):
                yield item
            else:
                loc, lo, hi = item
                data = await self._run(self.core.load, loc)
                yield Segment(None, 0, hi - lo, data[lo:hi])

    async def redirect_url(self, digest: Digest, *, expires: float = 1200.0, method: str = "GET") -> str | None:
        """A presigned URL (valid ``expires`` seconds) to which a client can send ``method`` (GET, HEAD) for the
        blob's bytes straight from object storage, when the blob is stored as one whole
        S3 object (raw pieces, back to back, one segment); else None (BlobUnknown when
        the store has no such blob).

        Finding that out reads the blob's recipe and every piece's location: ~50 ms for a
        1 GiB blob of 16,000 pieces. The answer is kept per blob (:data:`_RUNS`
        entries), keyed by its digest and commit time: the pieces of a committed blob
        never move while it exists, so only a blob committed again (a new commit time:
        pushed again, or deleted and pushed again) is looked at anew, and a GET after the
        first costs one row."""
        remote = self.core.remote
        if remote is None:
            return None

        def find() -> str | None:
            head = self.meta.blob_head(str(digest))
            if head is None:
                raise BlobUnknown(digest)
            key = (str(digest), head[1])
            with self._runs_lock:
                known = key in self._runs
                run = self._runs.get(key)
                if known:
                    self._runs.move_to_end(key)
            if not known:
                run = remote.whole_object(self._plan(digest, 0, None))
                with self._runs_lock:
                    self._runs[key] = run
                    while len(self._runs) > _RUNS:
                        self._runs.popitem(last=False)
            return None if run is None else remote.presign(run, expires, method)

        return await self._run(find)

    def _plan(self, digest: Digest, offset: int, length: int | None) -> list[Any]:
        row = self.meta.blob(str(digest))
        if row is None:
            raise BlobUnknown(digest)
        size, packed = row
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise InvalidRange(offset, length, size)
        if length == 0:
            return []
        entries = decode_recipe(packed)
        starts = []
        pos = 0
        for _, n in entries:
            starts.append(pos)
            pos += n
        first = bisect.bisect_right(starts, offset) - 1
        last = bisect.bisect_left(starts, offset + length) - 1
        wanted = entries[first : last + 1]
        locs = self.meta.locations(k for k, _ in wanted)
        plan: list[Any] = []
        end = offset + length
        paths: dict[str, Any] = {}  # pack -> local path (a Path costs ~10 us to make)
        run: list[Any] | None = None  # the open run of raw pieces: [pack, path, start, length]
        for i, (key, n) in enumerate(wanted):
            loc = locs.get(key)
            if loc is None:
                raise StoreCorrupt(f"blob {digest} names piece {key.hex()}, which is missing")
            p0 = starts[first + i]
            lo = max(offset, p0) - p0
            hi = min(end, p0 + n) - p0
            if loc.pack is not None and loc.codec != CODEC_ZSTD:
                path = paths.get(loc.pack, paths)
                if path is paths:
                    path = paths[loc.pack] = self.packs.local_path(loc.pack)
                if path is not None:
                    start = loc.offset + lo
                    if run is not None and run[0] == loc.pack and run[2] + run[3] == start:
                        run[3] += hi - lo
                    else:
                        if run is not None:
                            plan.append(Segment(run[1], run[2], run[3]))
                        run = [loc.pack, path, start, hi - lo]
                    continue
            if run is not None:
                plan.append(Segment(run[1], run[2], run[3]))
                run = None
            if loc.data is not None and loc.codec != CODEC_ZSTD:
                plan.append(Segment(None, 0, hi - lo, loc.data[lo:hi]))
                continue
            plan.append((loc, lo, hi))
        if run is not None:
            plan.append(Segment(run[1], run[2], run[3]))
        return plan

    async def read(self, digest: Digest, offset: int = 0,
                   length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes, in chunks of at most 4 MiB (BlobUnknown, InvalidRange)."""
        async for seg in self.segments(digest, offset, length):
            if seg.path is None:
                data = seg.data
                assert data is not None
                for at in range(0, len(data), _READ_CHUNK):
                    yield bytes(data[at : at + _READ_CHUNK])
                continue
            fd = await self._run(os.open, seg.path, os.O_RDONLY | os.O_CLOEXEC)
            reads: list[asyncio.Future[bytes]] = []
            try:
                # One read ahead: the next chunk is read while the caller uses this one.
                pos, left = seg.offset, seg.length
                while left or reads:
                    if left:
                        n = min(left, _READ_CHUNK)
                        reads.append(self._read_ahead(fd, n, pos, seg.path.name))
                        pos += n
                        left -= n
                    if len(reads) == 2 or not left:
                        data = await asyncio.shield(reads[0])
                        reads.pop(0)
                        yield data
            finally:
                # The descriptor must outlive every read in flight.
                for r in reads:
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(r)
                os.close(fd)

    def _read_ahead(self, fd: int, n: int, pos: int, name: str) -> asyncio.Future[bytes]:
        def read() -> bytes:
            data = os.pread(fd, n, pos)
            if len(data) != n:
                raise StoreCorrupt(f"{name} is short at {pos}: wanted {n} bytes, got {len(data)}")
            return data

        return asyncio.get_running_loop().run_in_executor(self._pool, read)

    async def export(self, digest: Digest, path: Path) -> None:
        """Write the blob to ``path`` atomically (a temporary file, synced, renamed into place)."""
        # a name of its own: another process may export the same blob there at once
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")

        def open_tmp() -> Any:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "wb")

        opening = asyncio.ensure_future(self._run_outside(open_tmp))
        try:
            f = await asyncio.shield(opening)
            async for chunk in self.read(digest):
                await self._run_outside(f.write, chunk)
            await self._run_outside(close_synced, f)  # it may fail too (a full disk)
        except BaseException:
            await asyncio.wait([opening])  # cancelled while a worker opens it: made all the same
            with contextlib.suppress(OSError):  # (the open's own error, if it failed)
                await self._run_outside(opening.result().close)
            await self._run_outside(tmp.unlink, True)
            raise
        await self._run_outside(os.replace, tmp, path)

    async def read_bytes(self, digest: Digest) -> bytes:
        return b"".join([c async for c in self.read(digest)])

    async def has_pieces(self, keys: Iterable[str]) -> set[str]:
        raw = [bytes.fromhex(k) for k in keys]
        found = await self._run(self.meta.known_pieces, raw)
        return {k.hex() for k in found}

    async def holds_pieces(self) -> bool:
        """Whether the store holds any piece (an empty store: none of any blob's)."""
        return await self._run(self.meta.holds_pieces)

    async def read_piece(self, key: str) -> bytes:
        raw = bytes.fromhex(key)
        found = await self._run(self.meta.locations, [raw])
        if raw not in found:
            raise KeyError(f"piece {key} is not in the store")
        return await self._run(self.core.load, found[raw])

    # -- links ---------------------------------------------------------------------

    async def link(self, holder: str, digest: Digest) -> None:
        if not await self._run(self.meta.link, holder, str(digest)):
            raise BlobUnknown(digest)

    async def link_all(self, holder: str, digests: list[Digest]) -> list[Digest]:
        """Link all of ``digests`` to ``holder`` at once, or none of them (BlobUnknown).
        Returns the digests not linked before. Durable on return (StoreCore.link_all)."""
        added = await self._run(self.core.link_all, holder, [str(d) for d in digests])
        if added is None:
            missing = [d for d in digests if await self.stat(d) is None]
            raise BlobUnknown(missing[0] if missing else digests[0])
        return [Digest.parse(d) for d in added]

    async def unlink(self, holder: str, digest: Digest) -> bool:
        return await self._run(self.meta.unlink, holder, str(digest))

    async def unlink_stale(self, holder: str, digests: list[Digest], older_than: float) -> list[Digest]:
        """Unlink those of ``digests`` that ``holder`` last linked more than ``older_than``
        seconds ago (one transaction; see ``Metadata.unlink_stale``); the ones unlinked."""
        before = time.time() - older_than
        removed = await self._run(self.meta.unlink_stale, holder, [str(d) for d in digests], before)
        return [Digest.parse(d) for d in removed]

    async def is_linked(self, holder: str, digest: Digest) -> bool:
        return await self._run(self.meta.is_linked, holder, str(digest))

    async def holders(self, digest: Digest) -> list[str]:
        return await self._run(self.meta.holders, str(digest))

    async def linked(self, holder: str) -> list[Digest]:
        return [Digest.parse(d) for d in await self._run(self.meta.linked, holder)]

    async def delete(self, digest: Digest) -> bool:
        """Remove the blob and all its links now; its pieces go at the next GC."""
        return await self._run(self.meta.delete_blob, str(digest))

    # -- maintenance (cas.maintenance) ---------------------------------------------

    async def gc(self, *, grace: float = 3600.0, compact_all: bool = False,
                 ingest_ttl: float | None = None,
                 progress: Callable[[GcProgress], None] | None = None) -> GcReport:
        """Remove blobs no holder links (older than ``grace`` seconds), then pieces no
        blob and no open ingest needs; online (see :mod:`cas.maintenance`). Packs that
        cannot free in place (S3) are compacted: those freed now, or all of them when
        ``compact_all`` (after a crash left some unvisited). ``ingest_ttl``: first abort
        open ingests whose last checkpoint is older than that many seconds. ``progress``
        is called (on a worker thread) as it goes."""
        from .maintenance import collect_garbage

        return await self._run(collect_garbage, self.core, grace, compact_all, ingest_ttl, progress)

    async def fsck(self, *, progress: Callable[[FsckProgress], None] | None = None) -> FsckReport:
        """Verify every blob's digest, every piece's BLAKE3 and the bookkeeping;
        ``progress`` is called (on a worker thread) after each blob."""
        from .maintenance import check

        return await self._run(check, self.core, progress)

    async def stats(self) -> Stats:
        from .maintenance import statistics

        return await self._run(statistics, self.core)
