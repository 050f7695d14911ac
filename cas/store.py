"""The content-addressed store: blobs as recipes of deduplicated pieces.

On-disk layout of a store directory (``--storage DIR``)::

    DIR/
      meta.db, meta.db-wal       metadata (cas.meta): pieces, recipes, links, ingests
      packs/<xx>/<name>.pack     piece bytes (cas.packs), one pack per ingest
      ingests/<id>.<offset>.tail bytes an open ingest holds back at its last checkpoint

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
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zstandard

from .chunker import ChunkParams
from .digest import DEFAULT_ALGORITHM, Digest, new_hasher
from .errors import BlobUnknown, IngestUnknown, InvalidRange, StoreClosed, StoreCorrupt, mapped_error
from .ingest import Ingest, IngestInfo
from .meta import CODEC_ZSTD, Location, SqliteMetadata, decode_recipe
from .packs import FilesystemPacks, PackBackend, PackWriter

__all__ = ["BlobInfo", "Piece", "Recipe", "Segment", "Store"]

T = TypeVar("T")

_READ_CHUNK = 4 << 20


class _Pool(ThreadPoolExecutor):
    """A thread pool that, once shut down, refuses work with StoreClosed."""

    def __init__(self, what: str, *, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.what = what

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise StoreClosed(self.what) from exc


@dataclass(frozen=True, slots=True)
class BlobInfo:
    digest: Digest
    size: int


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
    or the bytes themselves in ``data`` when ``path`` is None."""

    path: Path | None
    offset: int
    length: int
    data: bytes | None = None


class Store:
    """A store directory. Open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, root: Path, meta: SqliteMetadata, packs: PackBackend,
                 chunk_params: ChunkParams, workers: int) -> None:
        self.root = root
        self.meta = meta
        self.packs = packs
        self.chunk_params = chunk_params
        self._what = f"store {root}"
        self._closed = False
        self._pool = _Pool(self._what, max_workers=workers, thread_name_prefix="cas")
        # Threads that fill ingests from a source (Ingest.receive); a receive waits on
        # its source, so it must not take one of the store's own workers.
        self._receivers: _Pool | None = None
        self._ingests_dir = root / "ingests"
        self._dctx = zstandard.ZstdDecompressor()

    @classmethod
    async def open(cls, root: Path | str, *, chunk_params: ChunkParams | None = None,
                   packs: PackBackend | None = None, workers: int = 8) -> Store:
        root = Path(root)

        def setup() -> Store:
            try:
                root.mkdir(parents=True, exist_ok=True)
                (root / "ingests").mkdir(exist_ok=True)
                meta = SqliteMetadata(root / "meta.db")
            except (OSError, sqlite3.Error) as exc:
                raise mapped_error(exc, root) from exc
            try:
                backend = packs if packs is not None else FilesystemPacks(root / "packs")
            except OSError as exc:
                meta.close()
                raise mapped_error(exc, root) from exc
            return cls(root, meta, backend, chunk_params or ChunkParams(), workers)

        return await asyncio.get_running_loop().run_in_executor(None, setup)

    async def close(self) -> None:
        """Refuse new work (StoreClosed), wait for the work in flight, close the
        metadata. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        pools = [self._pool] + ([self._receivers] if self._receivers is not None else [])

        def shut_down() -> None:
            for pool in pools:
                pool.shutdown(wait=True)
            self.meta.close()

        await asyncio.get_running_loop().run_in_executor(None, shut_down)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run_outside(self, fn: Callable[..., T], *args: Any) -> T:
        """Run file work outside the store (an export's destination) on a worker: its
        errors are the destination's, not the store's."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except (OSError, sqlite3.Error) as exc:
            mapped = mapped_error(exc, self.root)
            if mapped is exc:
                raise
            raise mapped from exc

    # -- ingest --------------------------------------------------------------------

    async def begin_ingest(self, *, algorithm: str = DEFAULT_ALGORITHM) -> Ingest:
        new_hasher(algorithm)  # refuse unknown algorithms before anything is written
        ingest_id = secrets.token_hex(16)
        await self._run(self.meta.create_ingest, ingest_id, algorithm)
        return Ingest(self, ingest_id, algorithm)

    async def resume_ingest(self, ingest_id: str) -> Ingest:
        """Reopen an ingest at its last checkpoint (also after a restart or a crash)."""
        if not ingest_id.isalnum():
            raise IngestUnknown(ingest_id)
        row = await self._run(self.meta.get_ingest, ingest_id)
        if row is None:
            raise IngestUnknown(ingest_id)
        ing = Ingest(self, ingest_id, row.algorithm)
        await self._run(ing._restore, row.offset, row.npieces, row.pack, row.pack_size, row.tail_len)
        return ing

    async def list_ingests(self) -> list[IngestInfo]:
        rows = await self._run(self.meta.list_ingests)
        return [IngestInfo(r.id, r.offset, r.algorithm, r.created, r.updated) for r in rows]

    async def expire_ingests(self, older_than: float) -> int:
        """Abort ingests whose last checkpoint is more than ``older_than`` seconds old."""
        cutoff = time.time() - older_than
        n = 0
        for row in await self._run(self.meta.list_ingests):
            if row.updated < cutoff:
                await self._run(self._drop_ingest, row.id)
                n += 1
        return n

    def _drop_ingest(self, ingest_id: str) -> None:
        self.meta.drop_ingest(ingest_id)
        self._drop_tails(ingest_id, keep=None)
        self._empty_trash()

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
            if hasattr(chunks, "__aiter__"):
                async for c in chunks:  # type: ignore[union-attr]
                    await ing.write(c)
            else:
                for c in chunks:  # type: ignore[union-attr]
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
            with open(path, "rb") as f:
                while True:
                    block = await self._run(f.read, 4 << 20)
                    if not block:
                        break
                    await ing.write(block)
        except BaseException:
            await ing.abort()
            raise
        return await ing.commit(expected, link=link)

    # -- read ----------------------------------------------------------------------

    async def stat(self, digest: Digest) -> BlobInfo | None:
        row = await self._run(self.meta.blob, str(digest))
        return None if row is None else BlobInfo(digest, row[0])

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
        plan = await self._run(self._plan, digest, offset, length)
        for item in plan:
            if isinstance(item, Segment):
                yield item
            else:
                loc, lo, hi = item
                data = await self._run(self._load, loc)
                yield Segment(None, 0, hi - lo, data[lo:hi])

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
                assert seg.data is not None
                yield seg.data
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
        """Write the blob to ``path`` atomically (a temporary file renamed into place)."""
        tmp = path.with_name(path.name + ".tmp")

        def open_tmp() -> Any:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "wb")

        f = await self._run_outside(open_tmp)
        try:
            async for chunk in self.read(digest):
                await self._run_outside(f.write, chunk)
            await self._run_outside(f.close)  # its last flush may fail too (a full disk)
        except BaseException:
            with contextlib.suppress(OSError):
                await self._run_outside(f.close)
            await self._run_outside(tmp.unlink, True)
            raise
        await self._run_outside(os.replace, tmp, path)

    async def read_bytes(self, digest: Digest) -> bytes:
        return b"".join([c async for c in self.read(digest)])

    async def has_pieces(self, keys: Iterable[str]) -> set[str]:
        raw = [bytes.fromhex(k) for k in keys]
        found = await self._run(self.meta.locations, raw)
        return {k.hex() for k in found}

    async def read_piece(self, key: str) -> bytes:
        raw = bytes.fromhex(key)
        found = await self._run(self.meta.locations, [raw])
        if raw not in found:
            raise KeyError(f"piece {key} is not in the store")
        return await self._run(self._load, found[raw])

    def _load(self, loc: Location) -> bytes:
        """A piece's raw bytes (decompressed)."""
        if loc.data is not None:
            stored = loc.data
        elif loc.pack is not None:
            stored = self.packs.read(loc.pack, loc.offset, loc.stored)
        else:
            raise StoreCorrupt(f"piece {loc.key.hex()} has no bytes")
        if loc.codec == CODEC_ZSTD:
            try:
                return self._dctx.decompress(stored, max_output_size=loc.length)
            except zstandard.ZstdError as exc:
                raise StoreCorrupt(f"piece {loc.key.hex()} does not decompress: {exc}") from exc
        return stored

    # -- links ---------------------------------------------------------------------

    async def link(self, holder: str, digest: Digest) -> None:
        if not await self._run(self.meta.link, holder, str(digest)):
            raise BlobUnknown(digest)

    async def link_all(self, holder: str, digests: list[Digest]) -> list[Digest]:
        """Link all of ``digests`` to ``holder`` at once, or none of them (BlobUnknown).
        Returns the digests that were not linked before."""
        added = await self._run(self.meta.link_all, holder, [str(d) for d in digests])
        if added is None:
            missing = [d for d in digests if await self.stat(d) is None]
            raise BlobUnknown(missing[0] if missing else digests[0])
        return [Digest.parse(d) for d in added]

    async def unlink(self, holder: str, digest: Digest) -> bool:
        return await self._run(self.meta.unlink, holder, str(digest))

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

    async def gc(self, *, grace: float = 3600.0) -> Any:
        from .maintenance import collect_garbage

        return await self._run(collect_garbage, self, grace)

    async def fsck(self, *, progress: Callable[[str], None] | None = None) -> Any:
        from .maintenance import check

        return await self._run(check, self, progress)

    async def stats(self) -> Any:
        from .maintenance import statistics

        return await self._run(statistics, self)

    # -- helpers for Ingest and maintenance ----------------------------------------

    def _receiver_pool(self) -> ThreadPoolExecutor:
        if self._closed:
            raise StoreClosed(self._what)
        if self._receivers is None:
            self._receivers = _Pool(self._what, max_workers=32, thread_name_prefix="cas-receive")
        return self._receivers

    def _new_pack(self, ingest_id: str) -> PackWriter:
        name = secrets.token_hex(16)
        # Registered before the file exists: a pack file without a row is garbage.
        self.meta.set_ingest_pack(ingest_id, name)
        return self.packs.create(name)

    def _tail_path(self, ingest_id: str, offset: int) -> Path:
        return self._ingests_dir / f"{ingest_id}.{offset}.tail"

    def _drop_tails(self, ingest_id: str, keep: Path | None) -> None:
        for p in self._ingests_dir.glob(f"{ingest_id}.*"):
            if p != keep:
                p.unlink(missing_ok=True)

    def _empty_trash(self) -> None:
        while True:
            rows = self.meta.trash()
            if not rows:
                return
            for _, pack, offset, length in rows:
                if offset is None:
                    self.packs.delete(pack)
                else:
                    assert length is not None
                    self.packs.free(pack, offset, length)
            self.meta.forget_trash([r[0] for r in rows])

