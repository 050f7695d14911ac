"""A bounded on-disk cache of pieces whose packs are not local files (S3): :class:`PieceCache`.

A store whose packs live in object storage keeps, per replica, the raw bytes of the
pieces it served last in one file per piece, so a hot blob goes out of local files with
``sendfile`` instead of being fetched again::

    <storage>/cache/pieces/
      lock                       held (flock) by the one process that uses the cache
      <k0k1>/<key hex>           a piece's raw bytes (decompressed), named by its BLAKE3

- **Bounded**: the files never hold more than ``max_bytes`` together; the least
  recently used pieces go first (a piece being sent is pinned and never goes). Order
  across restarts is the files' modification times.
- **Crash-safe and verified**: a piece is written to a temporary file and renamed into
  place after its BLAKE3 was checked, so a partially written file is never named like a
  piece. A file is hashed again before its first use by a process and whenever its
  size, inode, modification or change time differ from when it was last verified (any
  write to it changes its change time): a corrupt or truncated file is removed and the
  piece fetched again, never served. (Like the store's own pack files, a file is not
  re-hashed on every send: ``pybuild storage fsck`` is for bit rot.)
- **One process**: the first process to open a store directory's cache holds its lock;
  another process on the same directory (a CLI command beside ``pybuild serve``) reads
  without a cache, so no process removes a file another one is sending.

Every method may block (files, hashing): call them from worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

import blake3

__all__ = ["DEFAULT_MAX_BYTES", "PieceCache", "default_max_bytes"]

#: The default bound: at most 10 GiB, and at most half the free space of the file system.
DEFAULT_MAX_BYTES = 10 << 30

_Stamp = tuple[int, int, int, int]  # size, inode, mtime_ns, ctime_ns


def default_max_bytes(where: Path) -> int:
    """10 GiB, or half of the free space of the file system of ``where`` when less."""
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    return min(DEFAULT_MAX_BYTES, free // 2)


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class PieceCache:
    """Pieces' raw bytes in files under ``root``, at most ``max_bytes`` of them. Open with
    :meth:`open` (None when another process holds the directory). Thread-safe."""

    def __init__(self, root: Path, max_bytes: int, lock_fd: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock_fd = lock_fd
        self._lock = threading.Lock()
        # key hex -> size, least recently used first
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._verified: dict[str, _Stamp] = {}
        self._pins: dict[str, int] = {}
        self._writing: set[str] = set()  # reserved, its file not renamed into place yet
        self._tmp = 0
        #: Counters: pieces served from files, pieces stored, pieces evicted, files
        #: found corrupt (removed).
        self.hits = 0
        self.stored = 0
        self.evicted = 0
        self.corrupt = 0

    @classmethod
    def open(cls, root: Path, max_bytes: int) -> PieceCache | None:
        """The cache in ``root`` (made if missing), its files indexed oldest first and
        temporary files left by a crash removed; None when another process uses it."""
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        cache = cls(root, max_bytes, fd)
        found: list[tuple[int, str, int]] = []
        for sub in root.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                if ".tmp" in f.name:
                    f.unlink(missing_ok=True)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = f.stat()
                    found.append((st.st_mtime_ns, f.name, st.st_size))
        for _, key, size in sorted(found):
            cache._lru[key] = size
            cache._bytes += size
        with cache._lock:
            cache._evict(0)
        return cache

    def close(self) -> None:
        """Release the directory's lock (the files stay for the next process)."""
        with self._lock:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    @property
    def size(self) -> int:
        """Bytes the cached pieces hold."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._lru)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    # -- lookups ---------------------------------------------------------------------

    def get(self, key: bytes, length: int) -> Path | None:
        """The file of piece ``key`` (``length`` raw bytes), pinned (call :meth:`unpin`
        once it is sent), or None when it is not cached. A file that is not what it
        should be (short, changed, failing its BLAKE3) is removed and None returned."""
        name = key.hex()
        with self._lock:
            if name not in self._lru or name in self._writing:
                return None
            self._lru.move_to_end(name)
            self._pins[name] = self._pins.get(name, 0) + 1
            known = self._verified.get(name)
        path = self.path(name)
        ok = False
        try:
            st = os.stat(path)
            if st.st_size == length:
                stamp = _stamp(st)
                ok = stamp == known or self._check(path, key, stamp)
        except OSError:
            ok = False
        if ok:
            with self._lock:
                self.hits += 1
            return path
        self.unpin(key)
        self._drop(name, corrupt=True)
        return None

    def _check(self, path: Path, key: bytes, stamp: _Stamp) -> bool:
        with open(path, "rb") as f:
            data = f.read()
        if blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest() != key:
            return False
        with self._lock:
            self._verified[key.hex()] = stamp
        return True

    def unpin(self, key: bytes) -> None:
        name = key.hex()
        with self._lock:
            n = self._pins.get(name, 0) - 1
            if n > 0:
                self._pins[name] = n
            else:
                self._pins.pop(name, None)

    # -- insertion -------------------------------------------------------------------

    def put(self, key: bytes, data: bytes | memoryview, *, verified: bool = False) -> bool:
        """Cache piece ``key`` with raw bytes ``data``, checked against the key first
        unless the caller just did (``verified``): ValueError when they differ. False
        when it does not fit (larger than the bound, or the rest is pinned) or is cached
        already."""
        size = len(data)
        if not verified and blake3.blake3(data).digest() != key:
            raise ValueError(f"piece {key.hex()}: its bytes do not hash to its key")
        name = key.hex()
        with self._lock:
            if name in self._lru or size > self.max_bytes or not self._evict(size):
                return False
            # Reserved now, so that concurrent puts keep the bound together.
            self._lru[name] = size
            self._bytes += size
            self._writing.add(name)
            self._tmp += 1
            tmp_name = f"{name}.{self._tmp}.tmp"
        path = self.path(name)
        tmp = path.with_name(tmp_name)
        try:
            path.parent.mkdir(exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            stamp = _stamp(os.stat(path))
        except OSError:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._writing.discard(name)
            self._drop(name, corrupt=False)
            return False
        with self._lock:
            self._writing.discard(name)
            self._verified[name] = stamp
            self.stored += 1
        return True

    def _evict(self, need: int) -> bool:
        """Remove least recently used unpinned pieces until ``need`` more bytes fit
        (holding the lock). False when they cannot."""
        if self._bytes + need <= self.max_bytes:
            return True
        for name in list(self._lru):
            if self._bytes + need <= self.max_bytes:
                break
            if name in self._pins or name in self._writing:
                continue
            self._bytes -= self._lru.pop(name)
            self._verified.pop(name, None)
            self.evicted += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
        return self._bytes + need <= self.max_bytes

    def _drop(self, name: str, *, corrupt: bool) -> None:
        with self._lock:
            if name in self._pins:
                return  # another reader holds it (verified): it stays
            size = self._lru.pop(name, None)
            if size is None:
                return
            self._bytes -= size
            self._verified.pop(name, None)
            if corrupt:
                self.corrupt += 1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(name))
