"""The store's core: what :class:`~cas.store.Store`, :class:`~cas.ingest.Ingest` and
maintenance (:mod:`cas.maintenance`) share, so none of them reaches into another.

A :class:`StoreCore` holds the metadata (any :class:`~cas.meta.Metadata`), the packs (any
:class:`~cas.packs.PackBackend`), the chunking parameters and the worker threads, and
offers the few operations on them that more than one of those modules needs. Its
synchronous methods may block (files, database): call them from a worker thread (through
:meth:`StoreCore.run`), never from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import zstandard

from .chunker import ChunkParams
from .digest_states import available as digest_states_available
from .errors import StorageFull, StorageNotWritable, StoreClosed, StoreCorrupt, mapped_error
from .location import StoreConfig, check_owner
from .meta import CODEC_ZSTD, Location, Metadata
from .pack_select import SharedSettings, open_packs, packs_are_shared
from .packs import PackBackend, PackWriter
from .read_only import READ_ONLY_CAUSE, on_read_only_fs
from .reserve import keep_reserve, release_reserve
from .sqlite_meta import SqliteMetadata

if TYPE_CHECKING:  # packs that are not local files (S3) only
    from .remote_read import RemoteReader

__all__ = ["RECEIVERS", "StoreCore", "TailKeeper", "WorkerPool", "close_synced"]

T = TypeVar("T")


def close_synced(f: Any) -> None:
    """Flush, fsync and close the file object ``f``: its bytes on disk before a rename
    gives them their name (else a power loss can leave the name on an empty file)."""
    with f:
        f.flush()
        os.fsync(f.fileno())


# Threads for Ingest.receive: a receive waits on its source, so it has threads of its own.
RECEIVERS = 32


class WorkerPool(ThreadPoolExecutor):
    """A thread pool that, once shut down, refuses work with StoreClosed."""

    def __init__(self, what: str, *, max_workers: int, thread_name_prefix: str) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.what = what

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError as exc:  # "cannot schedule new futures after shutdown"
            raise StoreClosed(self.what) from exc


@runtime_checkable
class TailKeeper(Protocol):
    """Metadata that can keep an open ingest's tail itself (PostgreSQL's,
    :class:`cas.pg_meta.PgMetadata`), so that no checkpoint depends on a local file."""

    def checkpoint_with_tail(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                             offset: int, npieces: int, pack_size: int, tail: bytes) -> None:
        """``Metadata.checkpoint`` and the tail at ``offset``, in one transaction."""

    def ingest_tail(self, ingest_id: str, offset: int) -> bytes | None:
        """The tail of the ingest's checkpoint at ``offset``, or None."""


class StoreCore:
    """The metadata, the packs, the chunk parameters and the worker pools of one store.

    ``root`` is the store directory; ``root / "ingests"`` must exist (tail files live
    there). The core owns ``meta`` and closes it in :meth:`close`; the packs need no
    closing.

    Where an open ingest's tail lives (:meth:`checkpoint`): in a file of
    ``root/ingests``, unless the store is shared — its packs in object storage and its
    metadata able to keep tails (PostgreSQL) — when it lives in the metadata, so that
    replicas with storage directories of their own resume each other's ingests. A file
    costs no network round trip: the single-node store keeps them.
    """

    def __init__(self, root: Path, meta: Metadata, packs: PackBackend,
                 chunk_params: ChunkParams, workers: int) -> None:
        self.root = root
        self.meta = meta
        self.packs = packs
        #: The metadata that keeps the tails, when the store is shared (see above).
        self.tail_keeper: TailKeeper | None = (
            meta if packs_are_shared(packs) and isinstance(meta, TailKeeper) else None)
        self.chunk_params = chunk_params
        self.what = f"store {root}"
        #: The store's worker threads: file, CPU and database work of every call.
        self.pool = WorkerPool(self.what, max_workers=workers, thread_name_prefix="cas")
        #: Background work that may wait (hashing a piece-level push's blob ahead of its
        #: commit, :mod:`cas.assemble`) takes at most this many of the pool's threads at
        #: once: the others stay free for the calls requests wait for.
        self.background = asyncio.Semaphore(max(1, workers // 4))
        self._receivers: WorkerPool | None = None
        self._closed = False
        self._ingests_dir = root / "ingests"
        # One zstd decompression context per thread: a context used by two threads at
        # once (each call releases the GIL) gives corrupt output, or crashes.
        self._local = threading.local()
        #: Fetching and caching of pieces, when the packs are not local files (S3).
        self.remote: RemoteReader | None = None
        #: Keep and use SHA-256 states of committed blobs (:mod:`cas.digest_states`).
        self.digest_states = False
        #: Opened read-only, on a read-only file system (:mod:`cas.read_only`): every
        #: write raises StorageNotWritable.
        self.read_only = False
        #: Ingests a full disk kept from being forgotten (:meth:`drop_ingest`): tried
        #: again when the store closes, after the rest of a failing command gave back
        #: what it could.
        self._undropped: set[str] = set()

    @classmethod
    async def open(cls, config: StoreConfig) -> StoreCore:
        """Open (creating) the store ``config`` describes: its directory, then its
        metadata and its packs (on a worker thread). A full or read-only file system is
        the store's typed StorageError; nothing stays open when opening fails.

        A config :meth:`~cas.location.StoreConfig.for_reading` on a read-only file system
        (``statvfs`` says so, or opening meets ``EROFS``) opens the store read-only
        instead (:mod:`cas.read_only`): :attr:`read_only` is then True."""
        root = config.root

        def setup() -> StoreCore:
            check_owner(root)
            read_only = config.reading and on_read_only_fs(root)
            try:
                return cls._setup(config, read_only)
            except StorageNotWritable as exc:
                # EROFS where statvfs did not say so (a file system that refuses writes
                # while mounted read-write): the read-write open wrote nothing.
                if read_only or not config.reading or exc.cause != READ_ONLY_CAUSE:
                    raise
                return cls._setup(config, True)

        return await asyncio.get_running_loop().run_in_executor(None, setup)

    @classmethod
    def _setup(cls, config: StoreConfig, read_only: bool) -> StoreCore:
        """:meth:`open`'s work, on a worker thread; ``read_only``: make and write nothing."""
        root = config.root
        if not read_only:
            release_reserve(root)  # a full disk: room to open the databases, to free space
        try:
            if not read_only:
                root.mkdir(parents=True, exist_ok=True)
                (root / "ingests").mkdir(exist_ok=True)
            meta = (config.metadata or (_read_only_sqlite_metadata if read_only
                                        else _sqlite_metadata))(root)
        except (OSError, sqlite3.Error) as exc:
            raise mapped_error(exc, root) from exc
        try:
            packs = (config.packs(root) if config.packs is not None
                     else open_packs(root, direct_io=config.direct_io, s3=config.s3,
                                     known=meta.is_pack_known,
                                     settings=meta if isinstance(meta, SharedSettings) else None))
        except BaseException as exc:
            meta.close()
            if isinstance(exc, OSError):
                raise mapped_error(exc, root) from exc
            raise
        core = cls(root, meta, packs, config.chunk_params or ChunkParams(), config.workers)
        core.read_only = read_only
        core.digest_states = config.digest_states and digest_states_available() and not read_only
        if getattr(packs, "remote", False):
            try:
                core.remote = _remote_reader(config, packs, read_only)
            except OSError as exc:  # the piece cache's directory
                core.pool.shutdown()
                meta.close()
                mapped = mapped_error(exc, exc.filename or root)
                if mapped is exc:
                    raise
                raise mapped from exc
        if not read_only:
            # Off the opening's path (a new store's first write and fsync, 15-45 ms), and
            # ended before close() returns: close waits for the pool's work.
            core.pool.submit(keep_reserve, root)
        return core

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun: every pool then refuses work (StoreClosed)."""
        return self._closed

    async def close(self) -> None:
        """Refuse new work (StoreClosed), wait for the work in flight, close the
        metadata. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        pools = [self.pool] + ([self._receivers] if self._receivers is not None else [])

        def shut_down() -> None:
            for pool in pools:
                pool.shutdown(wait=True)
            for ingest_id in list(self._undropped):
                with contextlib.suppress(Exception):
                    self.drop_ingest(ingest_id)
            if self.remote is not None:
                self.remote.close()
            self.meta.close()

        await asyncio.get_running_loop().run_in_executor(None, shut_down)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread. A full, read-only or unwritable file system
        (or database) under the store is raised as the store's typed StorageError
        (:func:`cas.errors.mapped_error`, naming the path); other errors pass unchanged.
        StoreClosed after :meth:`close`."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except (OSError, sqlite3.Error) as exc:
            mapped = mapped_error(exc, self.root)
            if mapped is exc:
                raise
            raise mapped from exc

    def receiver_pool(self) -> ThreadPoolExecutor:
        """The threads that fill ingests from blocking sources (made on first use, up to
        :data:`RECEIVERS` of them). StoreClosed after :meth:`close`."""
        if self._closed:
            raise StoreClosed(self.what)
        if self._receivers is None:
            self._receivers = WorkerPool(self.what, max_workers=RECEIVERS,
                                         thread_name_prefix="cas-receive")
        return self._receivers

    # -- blocking operations (worker threads) ------------------------------------------

    def new_pack(self, ingest_id: str) -> PackWriter:
        """A new, empty pack for the ingest's new pieces. The pack is registered in the
        metadata (``set_ingest_pack``) before its file exists, so a pack without a row
        is garbage that GC may remove."""
        name = os.urandom(16).hex()
        self.meta.set_ingest_pack(ingest_id, name)
        return self.packs.create(name)

    def tail_path(self, ingest_id: str, offset: int) -> Path:
        """The tail file of the ingest's checkpoint at ``offset``: the bytes its cutter
        held back then (``<root>/ingests/<id>.<offset>.tail``)."""
        return self._ingests_dir / f"{ingest_id}.{offset}.tail"

    def checkpoint(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                   offset: int, npieces: int, pack_size: int, tail: bytes) -> None:
        """Record a checkpoint of the ingest (``Metadata.checkpoint``) with its tail, the
        bytes its cutter holds back at ``offset``. Atomic: a crash at any point leaves
        this checkpoint or the previous one whole, and :meth:`read_tail` (in any process
        sharing the store, when the metadata keeps the tails) then gives its tail. The
        tail goes to a file written before the metadata that refers to it, or into the
        metadata's own transaction (:attr:`tail_keeper`)."""
        if self.tail_keeper is not None:
            self.tail_keeper.checkpoint_with_tail(ingest_id, rows, offset, npieces, pack_size, tail)
            return
        path = self.tail_path(ingest_id, offset)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(tail)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.meta.checkpoint(ingest_id, rows, offset, npieces, pack_size, len(tail))
        self.drop_tails(ingest_id, keep=path)

    def read_tail(self, ingest_id: str, offset: int, tail_len: int) -> bytes:
        """The tail of the ingest's checkpoint at ``offset`` (``tail_len`` bytes, as the
        metadata recorded). StoreCorrupt when it is missing or not that long."""
        if not tail_len:
            return b""
        tail = None if self.tail_keeper is None else self.tail_keeper.ingest_tail(ingest_id, offset)
        if tail is None:
            # Also for a shared store: a checkpoint made before its tails moved into the
            # metadata (a pybuild before schema step 3, on a shared directory) left a file.
            try:
                tail = self.tail_path(ingest_id, offset).read_bytes()
            except FileNotFoundError as exc:
                where = (f"neither in the metadata nor in {self._ingests_dir}"
                         if self.tail_keeper is not None else f"not in {self._ingests_dir}")
                raise StoreCorrupt(f"ingest {ingest_id}: the tail of its checkpoint at {offset} "
                                   f"is {where}") from exc
        if len(tail) != tail_len:
            raise StoreCorrupt(f"ingest {ingest_id}: its tail has {len(tail)} of {tail_len} bytes")
        return tail

    def drop_tails(self, ingest_id: str, keep: Path | None) -> None:
        """Remove the ingest's tail files (and temporary files), all but ``keep``."""
        for p in self._ingests_dir.glob(f"{ingest_id}.*"):
            if p != keep:
                p.unlink(missing_ok=True)

    def make_durable(self) -> None:
        """Every metadata commit so far survives a power loss, not only a crash: call it
        before another file or database names what they committed (a local image's
        record names its manifest). SQLite's commits may wait for a checkpoint for that
        (:meth:`~cas.sqlite_db.SqliteDatabase.make_durable`); PostgreSQL's are durable."""
        if isinstance(self.meta, SqliteMetadata):
            self.meta.make_durable()

    def link_all(self, holder: str, digests: list[str]) -> list[str] | None:
        """``Metadata.link_all``, durable when it linked (:meth:`make_durable`): the
        registry records the manifest that needs the links in a database of its own."""
        added = self.meta.link_all(holder, digests)
        if added is not None:
            self.make_durable()
        return added

    def empty_trash(self) -> None:
        """Free every pack range and delete every pack that the metadata has put in the
        trash, then forget them. Safe to run concurrently and again after a crash: a
        range freed twice stays free, a pack deleted twice stays gone."""
        while True:
            rows = self.meta.trash()
            if not rows:
                return
            deleted = {pack for _, pack, offset, _ in rows if offset is None}
            for pack in deleted:
                self.packs.delete(pack)
            ranges = sorted((pack, offset, length) for _, pack, offset, length in rows
                            if offset is not None and length is not None and pack not in deleted)
            for pack, offset, length in _merged(ranges):
                self.packs.free(pack, offset, length)
            self.meta.forget_trash([r[0] for r in rows])

    def drop_ingest(self, ingest_id: str) -> None:
        """Forget an open ingest: its metadata, its tail files, its pack (when it holds
        nothing committed). On a full disk the bytes it wrote past its last checkpoint
        are given back first: no metadata names them, and the database needs that room
        to forget it (else a failed pull or upload kept the disk full until expiry)."""
        try:
            self.meta.drop_ingest(ingest_id)
        except StorageFull:
            self._free_unsaved(ingest_id)
            try:
                self.meta.drop_ingest(ingest_id)
            except StorageFull:
                # Nothing of its own to give back (it had written nothing past its
                # checkpoint): the blobs failing beside it may free room. Again at close.
                self._undropped.add(ingest_id)
                raise
        self._undropped.discard(ingest_id)
        self.drop_tails(ingest_id, keep=None)
        self.empty_trash()

    def _free_unsaved(self, ingest_id: str) -> None:
        row = self.meta.get_ingest(ingest_id)
        if row is None or row.pack is None:
            return
        size = self.packs.size(row.pack)
        if size is not None and size > row.pack_size:
            self.packs.free(row.pack, row.pack_size, size - row.pack_size)

    def load(self, loc: Location) -> bytes:
        """A piece's raw bytes (decompressed). StoreCorrupt when its bytes are missing
        or do not decompress."""
        if loc.data is not None:
            stored = loc.data
        elif loc.pack is not None:
            stored = self.packs.read(loc.pack, loc.offset, loc.stored)
        else:
            raise StoreCorrupt(f"piece {loc.key.hex()} has no bytes")
        if loc.codec == CODEC_ZSTD:
            dctx = getattr(self._local, "dctx", None)
            if dctx is None:
                dctx = self._local.dctx = zstandard.ZstdDecompressor()
            try:
                out: bytes = dctx.decompress(stored, max_output_size=loc.length)
                return out
            except zstandard.ZstdError as exc:
                raise StoreCorrupt(f"piece {loc.key.hex()} does not decompress: {exc}") from exc
        return stored


def _remote_reader(config: StoreConfig, packs: PackBackend, read_only: bool) -> RemoteReader:
    """The reader of packs that are not local files, with its piece cache (none when
    the bound is 0, or the store is read-only). Processes sharing a storage directory
    (replicas) each take a cache directory of their own: ``pieces``, else ``pieces-1``,
    ... (up to 16 of them)."""
    from .piece_cache import PieceCache, default_max_bytes
    from .remote_read import RemoteReader

    where = config.piece_cache_dir or config.root / "cache" / "pieces"
    bound = 0 if read_only else config.piece_cache_bytes
    if bound is None:
        bound = default_max_bytes(where)
    cache = None
    for n in range(16 if bound > 0 else 0):
        cache = PieceCache.open(where.with_name(f"{where.name}-{n}") if n else where, bound)
        if cache is not None:
            break
    return RemoteReader(packs, cache, read_ahead=config.read_ahead)


def _merged(ranges: list[tuple[str, int, int]]) -> Iterator[tuple[str, int, int]]:
    """Sorted ``(pack, offset, length)`` ranges with those that touch or overlap in one
    pack joined: the dead pieces of a blob lie end to end, and one hole punched for them
    all costs what one punched for each of them would (a file system transaction)."""
    current: tuple[str, int, int] | None = None
    for pack, offset, length in ranges:
        if current is not None and current[0] == pack and offset <= current[1] + current[2]:
            end = max(current[1] + current[2], offset + length)
            current = (pack, current[1], end - current[1])
            continue
        if current is not None:
            yield current
        current = (pack, offset, length)
    if current is not None:
        yield current


def _sqlite_metadata(root: Path) -> Metadata:
    return SqliteMetadata(root / "meta.db")


def _read_only_sqlite_metadata(root: Path) -> Metadata:
    return SqliteMetadata(root / "meta.db", read_only=True)
