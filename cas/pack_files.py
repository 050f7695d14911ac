"""Packs as files: :class:`FilesystemPacks`, the :class:`~cas.packs.PackBackend` of a store
on disk, and its two pack writers (buffered appends through the page cache, and O_DIRECT
appends from staging buffers written on writer threads).

On-disk layout (``root`` is ``<storage>/packs``)::

    packs/
      3f/
        3f9a0c...e1.pack     pack named "3f9a0c...e1": pieces, back to back
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .buffers import copy_into
from .errors import StoreClosed, StoreCorrupt, storage_error

__all__ = ["STAGING", "FilesystemPacks"]


_SYNC_FILE_RANGE_WRITE = 0x2
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# The process's own symbols, libc's among them: ctypes.util.find_library would run
# `ldconfig -p` in a child process (~25 ms at the start of every command).
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    _fallocate.restype = ctypes.c_int
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_uint]
    _sync_file_range.restype = ctypes.c_int

# Start writeback every this many bytes, so the fsync at commit has little left to do.
_WRITEBACK_EVERY = 8 << 20
# Buffers per pwritev (the kernel's IOV_MAX).
_IOV_MAX = 1024


def _raise_full(exc: OSError, where: str | Path) -> None:
    """Raise ``exc`` as StorageFull / StorageNotWritable when it is one of those."""
    mapped = storage_error(exc, where)
    if mapped is not None and mapped is not exc:
        raise mapped from exc
    raise exc


class _FileWriter:
    """Appends through the page cache. Thread-safe: each call holds the writer's lock,
    so :meth:`close` waits for an append in flight and no write ever reaches a closed
    (and perhaps reused) descriptor; a call after close raises StoreClosed."""

    def __init__(self, name: str, path: Path, fd: int, size: int) -> None:
        self.name = name
        self._path = path
        self._fd = fd
        self._size = size
        self._flushed = size
        self._lock = threading.Lock()

    def _check_open(self) -> None:
        if self._fd < 0:
            raise StoreClosed(f"pack writer {self.name}")

    @property
    def size(self) -> int:
        return self._size

    def append(self, data: bytes | memoryview) -> int:
        return self.append_many([data])[0]

    def append_many(self, parts: Sequence[bytes | memoryview]) -> list[int]:
        with self._lock:
            self._check_open()
            return self._append_many(parts)

    def _append_many(self, parts: Sequence[bytes | memoryview]) -> list[int]:
        at = self._size
        views = [memoryview(p).cast("B") for p in parts]
        offsets = []
        for v in views:
            offsets.append(self._size)
            self._size += len(v)
        try:
            pos, first = at, 0
            while first < len(views):
                # At most _IOV_MAX buffers per call; a short write resumes mid-buffer.
                n = os.pwritev(self._fd, views[first : first + _IOV_MAX], pos)
                pos += n
                while first < len(views) and n >= len(views[first]):
                    n -= len(views[first])
                    first += 1
                if n:
                    views[first] = views[first][n:]
        except OSError as exc:
            # Leave no torn tail: the next append starts where the last good one ended.
            self._size = at
            os.ftruncate(self._fd, at)
            _raise_full(exc, self._path)
        self._write_back()
        return offsets

    def _write_back(self) -> None:
        if _sync_file_range is not None and self._size - self._flushed >= _WRITEBACK_EVERY:
            _sync_file_range(self._fd, self._flushed, self._size - self._flushed, _SYNC_FILE_RANGE_WRITE)
            self._flushed = self._size

    def sync(self) -> None:
        with self._lock:
            self._check_open()
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                _raise_full(exc, self._path)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


_ALIGN = 4096
_STAGE = 2 << 20
# Staging buffers per writer: while one fills, the others may be on their way to the
# device. Two left the appending thread waiting whenever one device write was slow
# (they vary from 1 to 10 ms here when other work shares the disk).
_BUFFERS = 4


class _StagingPool:
    """Staging buffers (page-aligned anonymous maps, as O_DIRECT needs) of closed writers,
    kept for the next writer: a fresh map is zeroed page by page on first touch, a fault
    per 4 KiB (a cold pull of 10 layers mapped 80 MiB of them fresh). Holds at most ``keep``;
    :meth:`clear` unmaps them (a process going idle gives the memory back)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, _STAGE)

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)
                return
        buf.close()

    def clear(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for buf in free:
            buf.close()


# Enough for the writers of the blobs one pull or copy moves at once (six) to start warm.
STAGING = _StagingPool(keep=6 * _BUFFERS)


class _DirectWriter:
    """Appends through O_DIRECT: whole aligned blocks go from reused staging buffers
    straight to the device, without page-cache copies (measured here: ~1.4-1.8 GB/s with
    next to no CPU, against ~0.7 GB/s for buffered writes plus fsync). The pack's bytes
    enter the page cache on their first read instead.

    The staging buffers are used in turn: while appends fill one, the full ones are
    written on writer threads (so the device's time is off the caller's path), at most
    ``_BUFFERS - 1`` of them at once.

    ``sync`` writes the partial last block padded to the alignment, truncates the file
    to its logical size and keeps the block staged, so later appends rewrite it whole.

    Thread-safe as :class:`_FileWriter` is: :meth:`close` waits for an append in flight
    before it unmaps the buffers (a copy into an unmapped buffer would crash).
    """

    def __init__(self, name: str, fd: int, size: int, tail: bytes, path: Path | None = None) -> None:
        self.name = name
        self._path: Path | str = path if path is not None else f"pack {name}"
        self._lock = threading.Lock()
        self._fd = fd
        # Page-aligned, as O_DIRECT needs.
        self._bufs = [STAGING.take() for _ in range(_BUFFERS)]
        self._views = [memoryview(b) for b in self._bufs]
        self._cur = 0
        # The write in flight from each buffer, if any.
        self._pending: list[Future[None] | None] = [None] * _BUFFERS
        self._disk = size - len(tail)  # file offset of the current buffer, aligned
        self._staged = len(tail)
        copy_into(self._views[0][: len(tail)], tail)

    @property
    def size(self) -> int:
        return self._disk + self._staged

    def _check_open(self) -> None:
        if self._fd < 0:
            raise StoreClosed(f"pack writer {self.name}")

    def append(self, data: bytes | memoryview) -> int:
        with self._lock:
            self._check_open()
            return self._append(data)

    def _append(self, data: bytes | memoryview) -> int:
        at = self.size
        src = memoryview(data).cast("B")
        while src:
            view = self._views[self._cur]
            n = min(len(src), _STAGE - self._staged)
            copy_into(view[self._staged : self._staged + n], src[:n])
            self._staged += n
            src = src[n:]
            if self._staged == _STAGE:
                self._pending[self._cur] = _WRITERS.submit(self._write, view, _STAGE, self._disk)
                self._cur = (self._cur + 1) % _BUFFERS
                self._disk += _STAGE
                self._staged = 0
                self._wait(self._cur)  # the next buffer must be on the device before reuse
        return at

    def append_many(self, parts: Sequence[bytes | memoryview]) -> list[int]:
        with self._lock:
            self._check_open()
            return [self._append(p) for p in parts]  # staged: no system call per part anyway

    def _wait(self, i: int) -> None:
        pending = self._pending[i]
        if pending is not None:
            self._pending[i] = None
            pending.result()

    def _wait_all(self) -> None:
        failure: BaseException | None = None
        for i in range(_BUFFERS):
            try:
                self._wait(i)
            except BaseException as exc:  # wait for every write before reporting
                failure = failure or exc
        if failure is not None:
            raise failure

    def _write(self, view: memoryview, n: int, at: int) -> None:
        try:
            done = 0
            while done < n:
                done += os.pwrite(self._fd, view[done:n], at + done)
        except OSError as exc:
            _raise_full(exc, self._path)

    def sync(self) -> None:
        with self._lock:
            self._check_open()
            self._wait_all()
            if self._staged:
                padded = -(-self._staged // _ALIGN) * _ALIGN
                view = self._views[self._cur]
                # The padding is zeros, never what a reused buffer held before (the file
                # is cut to its size next, but a crash in between would keep it).
                view[self._staged:padded] = bytes(padded - self._staged)
                self._write(view, padded, self._disk)
            try:
                os.ftruncate(self._fd, self.size)
                os.fdatasync(self._fd)
            except OSError as exc:
                _raise_full(exc, self._path)

    def close(self) -> None:
        with self._lock:
            if self._fd < 0:
                return
            try:
                self._wait_all()
            except OSError:
                pass  # closing after a failed write: the failure was reported already
            os.close(self._fd)
            self._fd = -1
            for v, b in zip(self._views, self._bufs):
                v.release()
                STAGING.give(b)


# Device writes of O_DIRECT packs run here, off the appending thread.
_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cas-pack-write")


def _open_direct(path: Path, flags: int) -> int | None:
    """An O_DIRECT descriptor, or None where the filesystem refuses it (tmpfs)."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, flags | direct, 0o644)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


class FilesystemPacks:
    """Packs as files under ``root``; frees dead ranges by punching holes."""

    def __init__(self, root: Path, direct: bool = True) -> None:
        self.root = root
        self.direct = direct
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        if not name.isalnum():
            raise ValueError(f"invalid pack name {name!r}")
        return self.root / name[:2] / f"{name}.pack"

    def create(self, name: str) -> _FileWriter | _DirectWriter:
        p = self.path(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            p.parent.mkdir(exist_ok=True)
            fd = _open_direct(p, flags) if self.direct else None
            writer: _FileWriter | _DirectWriter
            if fd is not None:
                writer = _DirectWriter(name, fd, 0, b"", p)
            else:
                writer = _FileWriter(name, p, os.open(p, flags, 0o644), 0)
        except OSError as exc:
            _raise_full(exc, p)
            raise
        # The new directory entry must survive a crash once the pack is referenced.
        _fsync_dir(p.parent)
        return writer

    def open_append(self, name: str, size: int) -> _FileWriter | _DirectWriter:
        p = self.path(name)
        if not p.exists():
            return self.create(name) if size == 0 else self._missing(name)
        fd = _open_direct(p, os.O_WRONLY | os.O_CLOEXEC) if self.direct else None
        if fd is not None:
            start = size - size % _ALIGN
            tail = self.read(name, start, size - start) if size > start else b""
            os.ftruncate(fd, size)
            return _DirectWriter(name, fd, size, tail, p)
        fd = os.open(p, os.O_WRONLY | os.O_CLOEXEC)
        os.ftruncate(fd, size)
        return _FileWriter(name, p, fd, size)

    def _missing(self, name: str) -> _FileWriter:
        raise StoreCorrupt(f"pack {name} is missing")

    def read(self, name: str, offset: int, length: int) -> bytes:
        try:
            with open(self.path(name), "rb", buffering=0) as f:
                data = os.pread(f.fileno(), length, offset)
        except FileNotFoundError as exc:
            raise StoreCorrupt(f"pack {name} is missing") from exc
        if len(data) != length:
            raise StoreCorrupt(
                f"pack {name} is short: wanted {length} bytes at {offset}, got {len(data)}"
            )
        return data

    def local_path(self, name: str) -> Path:
        return self.path(name)

    def free(self, name: str, offset: int, length: int) -> None:
        if _fallocate is None or length <= 0:
            return
        try:
            fd = os.open(self.path(name), os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            # Not supported on every filesystem: then the space waits for the pack to die.
            _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        finally:
            os.close(fd)

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*/*.pack"))

    def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return None

    def allocated(self) -> int:
        """Bytes the packs occupy on disk (holes excluded)."""
        return sum(p.stat().st_blocks * 512 for p in self.root.glob("*/*.pack"))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

