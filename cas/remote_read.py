"""Reading blobs whose pieces are not in local files (packs in S3): :class:`RemoteReader`.

:meth:`cas.store.Store.segments` plans a read as local segments and pieces to load;
here the pieces to load become

- files of the store's :class:`~cas.piece_cache.PieceCache` when cached (segments with a
  path: the server sends them with ``sendfile``), else
- *fetches*: one ranged read per run of pieces adjacent in one pack (the first up to
  :data:`FIRST_FETCH_BYTES`, the next ones twice as large as the one before, up to
  :attr:`RemoteReader.fetch_bytes`), so a fresh blob is a few large GETs, not one per
  piece, and its first bytes go out after a short one.

:meth:`RemoteReader.stream` runs the fetches ahead of the reader on the reader's own
threads, at most ``read_ahead`` of them (and ``read_ahead * fetch_bytes`` bytes) per
blob at once, and hands out the bytes in blob order: a run of raw pieces back to back in
a fetch is one read-only view of the GET's buffer (no copy). Every fetched piece is checked
against its BLAKE3 key (StoreCorrupt when it differs) and written to the cache by one
writer thread behind the read (at most :data:`WRITE_BEHIND` bytes wait; past that a
piece is left for a later read to cache), so the cache never slows a read down.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import blake3
import zstandard

from .blobs import Segment
from .errors import StoreClosed, StoreCorrupt
from .meta import CODEC_ZSTD, Location

if TYPE_CHECKING:
    from .packs import PackBackend
    from .piece_cache import PieceCache

__all__ = ["Fetch", "Pinned", "RemoteReader"]

#: Largest coalesced read (bytes of one pack fetched with one request).
FETCH_BYTES = 8 << 20
#: The cap of a blob's first coalesced read; each next one's is twice the last's, up to
#: ``fetch_bytes`` (1, 2, 4, 8, 8 ... MiB).
FIRST_FETCH_BYTES = 1 << 20
#: Fetches one blob read keeps in flight.
READ_AHEAD = 8
#: Threads that fetch, for all reads of a store.
FETCH_THREADS = 16
#: Bytes of fetched pieces that may wait to be written to the cache.
WRITE_BEHIND = 64 << 20


@dataclass(slots=True)
class Fetch:
    """Pieces adjacent in pack ``pack`` (their stored bytes ``[offset, offset+length)``),
    or pieces with inline bytes (``pack`` None); each with the raw slice ``[lo, hi)`` wanted."""

    pack: str | None
    offset: int
    length: int
    pieces: list[tuple[Location, int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Pinned:
    """A cached piece's file, pinned in the cache until it is sent."""

    segment: Segment
    key: bytes


class RemoteReader:
    """Fetching and caching for one store whose packs are not local files."""

    def __init__(self, packs: PackBackend, cache: PieceCache | None, *,
                 read_ahead: int = READ_AHEAD, fetch_bytes: int = FETCH_BYTES,
                 threads: int = FETCH_THREADS) -> None:
        self.packs = packs
        self.cache = cache
        self.read_ahead = max(1, read_ahead)
        self.fetch_bytes = max(1, fetch_bytes)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cas-fetch")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cas-cache")
        self._pending = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._in_flight = 0
        #: Counters: fetches made, the most in flight at once (any blob), bytes fetched.
        self.fetches = 0
        self.max_in_flight = 0
        self.fetched_bytes = 0
        #: Pieces not cached because the writer was behind.
        self.skipped = 0

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        if self.cache is not None:
            self.cache.close()

    # -- planning (a worker thread) -----------------------------------------------------

    def refine(self, plan: list[Any]) -> list[Any]:
        """``plan`` (segments and ``(location, lo, hi)`` pieces to load) with each piece to
        load replaced by its cached file (:class:`Pinned`) or a :class:`Fetch`, adjacent
        pieces of one pack merged into one fetch: the first of at most
        :data:`FIRST_FETCH_BYTES`, each next one of twice the last's cap, up to
        ``fetch_bytes``."""
        out: list[Any] = []
        cache = self.cache
        # Fetch n is capped at FIRST_FETCH_BYTES << n (up to fetch_bytes): the first
        # bytes arrive (and go out) early, later fetches are large.
        fetches = 0
        for item in plan:
            if isinstance(item, Segment):
                out.append(item)
                continue
            loc, lo, hi = item
            path = cache.get(loc.key, loc.length) if cache is not None else None
            if path is not None:
                out.append(Pinned(Segment(path, lo, hi - lo), loc.key))
                continue
            last = out[-1] if out else None
            cap = min(self.fetch_bytes, FIRST_FETCH_BYTES << min(max(fetches - 1, 0), 16))
            if (isinstance(last, Fetch) and last.pack == loc.pack
                    and (loc.pack is None or (last.offset + last.length == loc.offset
                                              and last.length + loc.stored <= cap))):
                last.pieces.append(item)
                last.length += loc.stored if loc.pack is not None else 0
                continue
            fetches += 1
            out.append(Fetch(loc.pack, loc.offset, loc.stored if loc.pack is not None else 0, [item]))
        return out

    def release(self, plan: list[Any]) -> None:
        """Unpin the cached files of ``plan`` (a read that ends early)."""
        if self.cache is not None:
            for item in plan:
                if isinstance(item, Pinned):
                    self.cache.unpin(item.key)

    def whole_object(self, plan: list[Any]) -> tuple[str, int, int] | None:
        """(pack, offset, length) when the bytes of ``plan`` (a whole blob's, unrefined)
        are all its pieces stored raw, back to back in one pack; else None. Whether that
        range is one whole object is :meth:`presign`'s question."""
        if getattr(self.packs, "presign", None) is None or not plan:
            return None
        if any(isinstance(item, Segment) for item in plan):
            return None
        first = plan[0][0]
        end = first.offset
        for loc, lo, hi in plan:
            if (loc.pack != first.pack or loc.pack is None or loc.codec == CODEC_ZSTD
                    or loc.offset != end or (lo, hi) != (0, loc.length)):
                return None
            end += loc.stored
        return first.pack, first.offset, end - first.offset

    def presign(self, run: tuple[str, int, int], expires: float, method: str = "GET") -> str | None:
        """A URL presigned for ``method`` of the one S3 object that holds exactly the pack
        bytes ``run`` ((pack, offset, length), from :meth:`whole_object`), or None when no
        one object does."""
        pack, offset, length = run
        url: str | None = self.packs.presign(pack, offset, length, expires, method)  # type: ignore[attr-defined]
        return url

    # -- fetching (the reader's threads) ----------------------------------------------

    def _fetch(self, f: Fetch) -> list[bytes | memoryview]:
        """The wanted bytes of ``f``'s pieces, checked; runs of raw pieces back to back
        in the fetched range are one view of the response's buffer (no copy)."""
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            # Backends with packs in S3 hand out the response's buffer (no copy).
            read = getattr(self.packs, "read_view", self.packs.read)
            stored = b"" if f.pack is None else read(f.pack, f.offset, f.length)
        finally:
            with self._lock:
                self._in_flight -= 1
                if f.pack is not None:
                    self.fetches += 1
                    self.fetched_bytes += f.length
        view = memoryview(stored)
        out: list[bytes | memoryview] = []
        run = -1, -1  # the open run of raw bytes of ``view`` to hand out
        for loc, lo, hi in f.pieces:
            if loc.pack is None:
                assert loc.data is not None
                body: bytes | memoryview = loc.data
            else:
                at = loc.offset - f.offset
                body = view[at : at + loc.stored]
            raw = self._raw(loc, body)
            if len(raw) != loc.length or blake3.blake3(raw).digest() != loc.key:
                where = f"pack {loc.pack} at {loc.offset}" if loc.pack else "its inline bytes"
                raise StoreCorrupt(f"piece {loc.key.hex()} ({where}) does not match its BLAKE3 "
                                   "key; run 'pybuild storage fsck'")
            self._keep(loc.key, raw)
            if raw is body and loc.pack is not None:
                if run[1] == at + lo:
                    run = run[0], at + hi
                    continue
                if run[0] >= 0:
                    out.append(view[run[0] : run[1]])
                run = at + lo, at + hi
                continue
            if run[0] >= 0:
                out.append(view[run[0] : run[1]])
                run = -1, -1
            out.append(raw if (lo, hi) == (0, len(raw)) else memoryview(raw)[lo:hi])
        if run[0] >= 0:
            out.append(view[run[0] : run[1]])
        return out

    def _keep(self, key: bytes, raw: bytes | memoryview) -> None:
        """Write a verified piece to the cache on the writer thread, off the read's
        path; skipped when :data:`WRITE_BEHIND` bytes already wait (the disk is slower
        than S3: a later read of the blob caches the rest). ``raw`` is never changed
        (bytes, or a view of a fetched buffer): it is kept, not copied; a view holds its
        whole fetch (at most ``fetch_bytes``) until written."""
        if self.cache is None:
            return
        size = len(raw)
        with self._lock:
            if self._pending + size > WRITE_BEHIND:
                self.skipped += 1
                return
            self._pending += size
        cache = self.cache

        def write() -> None:
            try:
                cache.put(key, raw, verified=True)
            finally:
                with self._lock:
                    self._pending -= size

        try:
            self._writer.submit(write)
        except RuntimeError:  # shut down
            with self._lock:
                self._pending -= size

    def flush(self) -> None:
        """Wait until the pieces fetched so far are written to the cache (or skipped)."""
        self._writer.submit(lambda: None).result()

    def _raw(self, loc: Location, body: bytes | memoryview) -> bytes | memoryview:
        if loc.codec != CODEC_ZSTD:
            return body
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            out: bytes = dctx.decompress(body, max_output_size=loc.length)
        except zstandard.ZstdError as exc:
            raise StoreCorrupt(f"piece {loc.key.hex()} does not decompress: {exc}") from exc
        return out

    # -- streaming (the event loop) ---------------------------------------------------

    async def stream(self, plan: list[Any]) -> AsyncIterator[Segment]:
        """The segments of a refined ``plan`` in order, fetches run ahead (at most
        ``read_ahead`` of them, and their bytes, held at once). A cached file stays
        pinned until the caller asks for the next segment."""
        loop = asyncio.get_running_loop()
        fetches = deque(item for item in plan if isinstance(item, Fetch))
        running: dict[int, asyncio.Future[list[bytes | memoryview]]] = {}

        def launch() -> None:
            while fetches and len(running) < self.read_ahead:
                f = fetches.popleft()
                try:
                    fut = loop.run_in_executor(self._pool, self._fetch, f)
                except RuntimeError as exc:  # shut down
                    raise StoreClosed("store (fetching pieces)") from exc
                # A fetch that fails after its reader went away is not reported twice.
                fut.add_done_callback(lambda x: x.cancelled() or x.exception())
                running[id(f)] = fut

        pos = 0  # plan[pos:] still holds its pins
        try:
            while pos < len(plan):
                item = plan[pos]
                launch()
                pos += 1
                if isinstance(item, Segment):
                    yield item
                elif isinstance(item, Pinned):
                    try:
                        yield item.segment
                    finally:
                        assert self.cache is not None
                        self.cache.unpin(item.key)
                else:
                    fut = running[id(item)]
                    try:
                        parts = await fut
                    finally:
                        del running[id(item)]
                    launch()
                    for data in parts:
                        yield Segment(None, 0, len(data), data)
        finally:
            self.release(plan[pos:])
            for fut in running.values():
                fut.cancel()
