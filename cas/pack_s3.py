"""Packs in S3-compatible object storage: :class:`S3Packs`, a :class:`~cas.packs.PackBackend`
for AWS S3, Ceph's RADOS Gateway, MinIO and the like.

S3 has no append and no hole punching, so a pack is a series of sealed *segments*, each
one immutable object named by the pack offset it starts at::

    <prefix>packs/
      3f9a0c...e1/             pack "3f9a0c...e1"
        0000000000000000       its bytes [0, n0)          (empty while the pack is new)
        0000000000a00000       its bytes [0xa00000, ...)  (written by a later sync)

- A writer gathers appended bytes in memory; past ``part_size`` bytes it starts a
  multipart upload and hands it each full buffer, which it sends as parts (two at
  once), so a writer holds about three parts whatever the pack's size. :meth:`~_S3Writer.sync` seals what was appended
  since the last sync as one segment (a single PUT when small, else it completes the
  multipart upload): then the bytes are durable and readable, as the contract asks.
- Reads are ranged GETs of the segments that cover the range. Each process caches the
  segment list of the packs it read; a GET that finds a segment gone (rewritten by
  compaction or by a resume in another process) lists the pack again and retries once.
- ``free`` only notes the pack: space comes back by :meth:`S3Packs.compact`, which rewrites a
  segment whose live bytes fall below a fraction of it as one object per run of live
  bytes, each named by its own pack offset. Pack offsets never change, so no metadata
  is touched and readers holding old locations keep reading; the run objects are
  written before the old segment goes, so a live byte is always readable.
- Every request is retried with exponential backoff and jitter on 5xx answers,
  dropped connections and timeouts (the client's retry policy, :data:`RETRY`).

The client is obstore (Rust's ``object_store``; SigV4, multipart, retries); why that one
is in docs/storage.md, measured by ``python3 -m bench.s3_clients``. Every method blocks
the calling thread (the store calls them from its worker threads) and releases the GIL
while it waits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import obstore
from obstore.store import S3Store

from .errors import StorageError, StoreClosed, StoreCorrupt
from .s3_location import ObjectStorageUnavailable, S3Location

if TYPE_CHECKING:
    from obstore import WritableFile
    from obstore.store import ClientConfig, RetryConfig

__all__ = ["RETRY", "S3Packs", "S3StorageError"]

#: How a failed request is retried: 5xx, connection errors, timeouts.
RETRY: RetryConfig = {
    "max_retries": 6,
    "retry_timeout": timedelta(seconds=120),
    "backoff": {"init_backoff": timedelta(milliseconds=50), "max_backoff": timedelta(seconds=5),
                "base": 2.0},
}


def _client_options(secure: bool) -> ClientConfig:
    return {"connect_timeout": "5s", "timeout": "120s", "pool_max_idle_per_host": "64",
            "allow_http": not secure}

# Parts of one multipart upload in flight at once.
_CONCURRENCY = 2
# Live ranges closer than this are kept together (with the dead bytes between) when a
# segment is rewritten: fewer, larger objects.
_JOIN_GAP = 256 << 10
# Packs whose segment lists one process keeps.
_CACHE_PACKS = 100_000


class S3StorageError(StorageError):
    """Object storage refused or failed a request; the message says which and the fix."""


class S3Unreachable(S3StorageError, ObjectStorageUnavailable):
    """The endpoint could not be reached (after the client's retries)."""


def _describe(exc: BaseException, loc: S3Location, what: str) -> S3StorageError:
    text = str(exc)
    if "NoSuchBucket" in text:
        msg = (f"S3 bucket {loc.bucket!r} does not exist at {loc.url}; create it with the "
               f"bucket's user (e.g. 'aws --endpoint-url {loc.url} s3 mb s3://{loc.bucket}') "
               "or name another bucket")
    elif any(code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                                        "403 Forbidden")) or isinstance(
            exc, (obstore.exceptions.PermissionDeniedError, obstore.exceptions.UnauthenticatedError)):
        msg = (f"S3 at {loc.url} refused the keys for bucket {loc.bucket!r} "
               f"({_code(text)}); check the access key and secret key (URL, packs.json, or "
               "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the user's rights on the bucket")
    elif any(s in text for s in ("error sending request", "Connection refused", "connect", "timed out")):
        return S3Unreachable(
            f"S3 endpoint {loc.url} cannot be reached while {what}: {text.splitlines()[0][:300]}; "
            "check the endpoint and secure=, and that the server runs", str(loc), text[:500])
    else:
        msg = f"S3 request failed while {what} at {loc}: {text.splitlines()[0][:500]}"
    return S3StorageError(msg, str(loc), text[:500])


def _code(text: str) -> str:
    start = text.find("<Code>")
    if start < 0:
        return "403 Forbidden"
    return text[start + 6 : text.find("</Code>", start)]


def _is_missing(exc: BaseException) -> bool:
    return isinstance(exc, (FileNotFoundError, obstore.exceptions.NotFoundError))


class _S3Writer:
    """Appends to one pack (see the module docstring). Thread-safe: each call holds the
    writer's lock; a call after close raises StoreClosed, and after a failed upload
    every call raises that failure again (resume from the last checkpoint)."""

    def __init__(self, packs: S3Packs, name: str, size: int) -> None:
        self.name = name
        self._packs = packs
        self._start = size  # pack offset of the segment being written
        self._sent = 0  # bytes of that segment handed to the multipart upload
        self._buf = bytearray()
        self._upload: WritableFile | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._failed: BaseException | None = None

    @property
    def size(self) -> int:
        return self._start + self._sent + len(self._buf)

    def _check(self) -> None:
        if self._closed:
            raise StoreClosed(f"pack writer {self.name}")
        if self._failed is not None:
            raise self._failed

    def append(self, data: bytes | memoryview) -> int:
        return self.append_many([data])[0]

    def append_many(self, parts: Sequence[bytes | memoryview]) -> list[int]:
        with self._lock:
            self._check()
            offsets = []
            for p in parts:
                offsets.append(self.size)
                # Copied: obstore keeps the buffers it is given until their part is sent,
                # and the caller's views (the cutter's buffer) are reused at once.
                self._buf += p
            if len(self._buf) >= self._packs.location.part_size:
                self._send(self._buf)
                self._buf = bytearray()
            return offsets

    def _send(self, data: bytes | bytearray | memoryview) -> None:
        """Hand ``data`` (never to be changed again) to the segment's multipart upload
        (started on first use), which sends each part as it fills. A failure fails the
        writer for good."""
        packs = self._packs
        try:
            if self._upload is None:
                self._upload = obstore.open_writer(
                    packs.store, packs.key(self.name, self._start),
                    buffer_size=packs.location.part_size, max_concurrency=_CONCURRENCY)
            self._upload.write(data)
        except Exception as exc:
            self._failed = _describe(exc, packs.location, f"uploading pack {self.name}")
            raise self._failed from exc
        self._sent += len(data)

    def sync(self) -> None:
        with self._lock:
            self._check()
            length = self._sent + len(self._buf)
            if not length:
                return
            packs = self._packs
            key = packs.key(self.name, self._start)
            try:
                if self._upload is not None:
                    if self._buf:
                        self._upload.write(self._buf)
                    self._upload.close()
                else:
                    obstore.put(packs.store, key, self._buf, use_multipart=False)
            except Exception as exc:
                self._failed = _describe(exc, packs.location, f"sealing pack {self.name}")
                raise self._failed from exc
            packs._sealed(self.name, self._start, length)
            self._start += length
            self._sent = 0
            self._buf = bytearray()
            self._upload = None

    def close(self) -> None:
        """Release the writer: bytes appended since the last sync are dropped (an
        unfinished multipart upload is left to the bucket's lifecycle rule)."""
        with self._lock:
            self._closed = True
            self._upload = None
            self._buf = bytearray()


class S3Packs:
    """Packs as sealed segments in an S3 bucket (see the module docstring).

    Opening checks the bucket and the keys with one request, so a wrong name or a refused
    key is reported at start (S3StorageError, naming the bucket and the fix).
    """

    #: Not local files: a store reads these packs ahead and caches their pieces
    #: (:mod:`cas.remote_read`).
    remote = True

    def __init__(self, location: S3Location, *, check: bool = True) -> None:
        self.location = location
        if not (location.access_key and location.secret_key):
            raise S3StorageError(
                f"no S3 keys for bucket {location.bucket!r} at {location.url}: give them as "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, in the s3:// URL "
                "(KEY:SECRET@HOST), or as storage.s3 accesskey/secretkey in the config",
                str(location))
        self.store = S3Store(
            location.bucket,
            endpoint=location.url,
            access_key_id=location.access_key,
            secret_access_key=location.secret_key,
            region=location.region,
            virtual_hosted_style_request=False,
            client_options=_client_options(location.secure),
            retry_config=RETRY,
        )
        self._root = f"{location.prefix}packs/"
        self._segments: dict[str, list[tuple[int, int]]] = {}
        self._freed: set[str] = set()
        self._lock = threading.Lock()
        if check:
            self._call("checking the bucket", obstore.list_with_delimiter, self.store, self._root)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if _is_missing(exc):
                raise
            raise _describe(exc, self.location, what) from exc

    def key(self, name: str, start: int) -> str:
        """The object key of the segment of pack ``name`` that starts at ``start``."""
        if not name.isalnum():
            raise ValueError(f"invalid pack name {name!r}")
        return f"{self._root}{name}/{start:016x}"

    # -- segment lists ----------------------------------------------------------------

    def _list(self, name: str) -> list[tuple[int, int]]:
        """The pack's segments (start, length), sorted, fresh from the bucket."""
        prefix = f"{self._root}{name}/"
        segs = []
        for meta in self._listing(f"listing pack {name}", prefix):
            tail = meta["path"][len(prefix):]
            if len(tail) == 16:
                try:
                    segs.append((int(tail, 16), int(meta["size"])))
                except ValueError:
                    continue
        segs.sort()
        with self._lock:
            if len(self._segments) >= _CACHE_PACKS:
                self._segments.clear()
            self._segments[name] = segs
        return segs

    def _listing(self, what: str, prefix: str) -> Iterator[Any]:
        """Every object under ``prefix``, page by page. obstore lists lazily and its
        errors come while the pages are read, outside :meth:`_call`: they are translated
        here as every other call's."""
        try:
            for chunk in obstore.list(self.store, prefix, chunk_size=1000):
                yield from chunk
        except Exception as exc:
            if _is_missing(exc):
                raise
            raise _describe(exc, self.location, what) from exc

    def _cached(self, name: str) -> list[tuple[int, int]]:
        with self._lock:
            segs = self._segments.get(name)
        return segs if segs is not None else self._list(name)

    def _sealed(self, name: str, start: int, length: int) -> None:
        with self._lock:
            segs = self._segments.get(name)
            if segs is not None:
                segs[:] = sorted([s for s in segs if s[0] != start] + [(start, length)])

    # -- PackBackend ------------------------------------------------------------------

    def create(self, name: str) -> _S3Writer:
        """An empty pack: an empty first segment, so that :meth:`names` lists it."""
        self._call(f"creating pack {name}", obstore.put, self.store, self.key(name, 0), b"",
                   use_multipart=False)
        with self._lock:
            self._segments[name] = [(0, 0)]
        return _S3Writer(self, name, 0)

    def open_append(self, name: str, size: int) -> _S3Writer:
        """Reopen for appending at ``size``: segments starting at or past it are deleted
        and one that straddles it is rewritten up to it."""
        segs = self._list(name)
        if not segs:
            if size == 0:
                return self.create(name)
            raise StoreCorrupt(f"pack {name} is missing")
        doomed = [self.key(name, s) for s, n in segs if s >= size and (s, n) != (0, 0)]
        for start, n in segs:
            if start < size < start + n:
                self._copy(name, start, start, size - start)
        if doomed:
            self._call(f"truncating pack {name}", obstore.delete, self.store, doomed)
        if size == 0:
            return self.create(name)
        self._list(name)
        return _S3Writer(self, name, size)

    def read(self, name: str, offset: int, length: int) -> bytes:
        parts = self._parts(name, offset, length)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def read_view(self, name: str, offset: int, length: int) -> bytes | memoryview:
        """As :meth:`read`, without copying the bytes of a range that one object holds:
        a read-only view of the response's buffer (:mod:`cas.remote_read` slices it)."""
        parts = self._parts(name, offset, length)
        return memoryview(parts[0]) if len(parts) == 1 else b"".join(parts)

    def _parts(self, name: str, offset: int, length: int) -> list[Any]:
        for attempt in range(2):
            segs = self._list(name) if attempt else self._cached(name)
            parts = self._read(name, segs, offset, length)
            if parts is not None:
                return parts
        if not segs:
            raise StoreCorrupt(f"pack {name} is missing")
        raise StoreCorrupt(f"pack {name} is short: wanted {length} bytes at {offset}, "
                           f"its segments end at {max(s + n for s, n in segs)}")

    def _read(self, name: str, segs: list[tuple[int, int]], offset: int, length: int) -> list[Any] | None:
        """The bytes as the buffers of one ranged GET per object that holds a part of
        them, or None when the segment list looks stale (a gap, a missing or short
        object)."""
        out: list[Any] = []
        pos, end = offset, offset + length
        while pos < end:
            best = max(((s, n) for s, n in segs if s <= pos < s + n), key=lambda sn: sn[0] + sn[1],
                       default=None)
            if best is None:
                return None
            start, n = best
            want = min(end, start + n) - pos
            try:
                got = self._call(f"reading pack {name}", obstore.get_range, self.store,
                                 self.key(name, start), start=pos - start, length=want)
            except Exception as exc:
                # Gone, or now shorter than the range (416): rewritten by compaction.
                if _is_missing(exc) or "InvalidRange" in str(exc.__cause__ or exc):
                    return None
                raise
            if len(got) != want:
                return None
            out.append(got)
            pos += want
        return out or [b""]

    def presign(self, name: str, offset: int, length: int, expires: float,
                method: Literal["GET", "HEAD"] = "GET") -> str | None:
        """A URL presigned for ``method`` (valid ``expires`` seconds) of the segment that
        holds exactly the pack's bytes ``[offset, offset+length)``, or None when no one
        object does."""
        segs = self._cached(name)
        if (offset, length) not in segs:
            if segs and offset < max(s + n for s, n in segs):
                return None  # inside what this replica has seen: not one object
            # Past the end this replica last listed: another writer may have sealed it since.
            if (offset, length) not in self._list(name):
                return None
        url: str = self._call(f"signing a URL for pack {name}", obstore.sign, self.store, method,
                              self.key(name, offset), timedelta(seconds=expires))
        return url

    def local_path(self, name: str) -> None:
        return None

    def free(self, name: str, offset: int, length: int) -> None:
        """Objects cannot shrink in place: remember the pack, so that compaction
        (:func:`cas.compaction.compact_packs`, run by GC) rewrites it."""
        if length > 0:
            with self._lock:
                self._freed.add(name)

    def take_freed(self) -> set[str]:
        """The packs :meth:`free` was called on since the last call (and forget them)."""
        with self._lock:
            freed, self._freed = self._freed, set()
        return freed

    def delete(self, name: str) -> None:
        keys = [self.key(name, s) for s, _ in self._list(name)]
        if keys:
            self._call(f"deleting pack {name}", obstore.delete, self.store, keys)
        with self._lock:
            self._segments.pop(name, None)

    def names(self) -> list[str]:
        found = self._call("listing packs", obstore.list_with_delimiter, self.store, self._root)
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found["common_prefixes"])

    def size(self, name: str) -> int | None:
        segs = self._list(name)
        return max(s + n for s, n in segs) if segs else None

    def allocated(self) -> int:
        """Bytes the packs' objects hold in the bucket."""
        return sum(int(m["size"]) for m in self._listing("listing packs", self._root))

    # -- compaction -------------------------------------------------------------------

    def compact(self, name: str, live: Sequence[tuple[int, int]], min_live: float = 0.5) -> int:
        """Rewrite each segment of pack ``name`` whose live bytes (``live``: the (offset,
        length) of every piece that may still be read) are below ``min_live`` of its
        size; return the bytes given back. Live bytes keep their pack offsets, and stay
        readable throughout: the new objects exist before the old one goes."""
        if not live:
            return 0  # a pack with nothing live is deleted whole by GC, not here
        ranges = sorted((o, o + n) for o, n in live if n > 0)
        freed = 0
        for start, n in self._list(name):
            end = start + n
            inside = [(max(a, start), min(b, end)) for a, b in ranges if a < end and b > start]
            kept = sum(b - a for a, b in inside)
            if n == 0 or kept >= min_live * n:
                continue
            runs: list[list[int]] = []
            for a, b in inside:
                if runs and a - runs[-1][1] <= _JOIN_GAP:
                    runs[-1][1] = max(runs[-1][1], b)
                else:
                    runs.append([a, b])
            # The run at the segment's own key replaces it, so it is written last.
            for a, b in sorted(runs, key=lambda r: r[0] == start):
                self._copy(name, start, a, b - a)
            if not runs or runs[0][0] != start:
                self._call(f"compacting pack {name}", obstore.delete, self.store, self.key(name, start))
            freed += n - sum(b - a for a, b in runs)
        self._list(name)
        return freed

    def _copy(self, name: str, src: int, at: int, length: int) -> None:
        """Write the pack's bytes [at, at+length), read from the segment at ``src``, as
        the segment that starts at ``at`` (a part at a time)."""
        src_key, dst_key = self.key(name, src), self.key(name, at)
        part = self.location.part_size
        what = f"rewriting pack {name}"
        if length <= part:
            data = self._call(what, obstore.get_range, self.store, src_key, start=at - src, length=length)
            if len(data) != length:
                raise StoreCorrupt(f"pack {name} is short: its segment at {src} ends early")
            self._call(what, obstore.put, self.store, dst_key, data, use_multipart=False)
            return
        upload = self._call(what, obstore.open_writer, self.store, dst_key, buffer_size=part,
                            max_concurrency=_CONCURRENCY)
        for off in range(0, length, part):
            chunk = self._call(what, obstore.get_range, self.store, src_key, start=at - src + off,
                               length=min(part, length - off))
            self._call(what, upload.write, chunk)
        self._call(what, upload.close)
