"""Byte buffers: copies with the GIL released, and a pool of large buffers for reuse.

**Copies.** A slice assignment (``dst[a:b] = src``) copies while holding the GIL, so one thread that
stages megabytes of pieces stalls every other thread of the process: the ones hashing
and writing other blobs, and the event loop. Copies of more than :data:`_THRESHOLD`
bytes go through ``memmove`` called by ``ctypes``, which releases the GIL for the call.
Smaller ones keep it: releasing it costs a hand-over to another thread and back (two
context switches when threads wait for it), more than copying a piece of ~80 KiB
(~10 us). A cold pull of 6,600 such pieces made ~10,000 context switches with a
64 KiB threshold and ~6,800 with this one, and took ~4 % less time.

**The pool.** A fresh large buffer is zeroed page by page on first touch, a page fault per
4 KiB (~0.6 ms per MiB on a virtual machine, more than hashing the same bytes), and is
given back to the system when freed. Cutters take their full-size buffer from
:data:`POOL` and give it back when their ingest ends, so a pull of many layers faults in
a few buffers, not one per layer.

**malloc.** For the same reason, glibc is told (once, at import) to serve allocations up
to 32 MiB from its heap and to keep up to 64 MiB free there: by default a 4 MiB ``bytes``
(a chunk read from a pack, a piece run) is a fresh ``mmap`` every time, faulted in page by
page and unmapped when freed (``Store.read`` ran at ~5.5 GB/s instead of ~7 GB/s).
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment still win.
The price is that freed memory stays in the heap (and in the arenas of worker threads)
instead of going back to the system: a long-running process that released a lot (a
registry whose upload sessions went idle) calls :func:`trim_heap`, which gives the free
pages back (``malloc_trim``) at most once a second.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

__all__ = ["POOL", "BufferPool", "copy_into", "trim_heap"]

# Up to this a copy keeps the GIL (a slice assignment); above, memmove releases it.
_THRESHOLD = 1 << 20


def copy_into(dst: memoryview, src: bytes | bytearray | memoryview) -> None:
    """``dst[:] = src`` for a writable byte view ``dst`` of exactly ``len(src)`` bytes."""
    n = len(dst)
    size = src.nbytes if isinstance(src, memoryview) else len(src)
    if size != n:
        raise ValueError(f"copy of {size} bytes into {n}")
    if n <= _THRESHOLD:
        dst[:] = src
        return
    target = ctypes.addressof(ctypes.c_char.from_buffer(dst))
    if isinstance(src, bytes):
        ctypes.memmove(target, src, n)
    elif isinstance(src, bytearray) or (isinstance(src, memoryview) and not src.readonly
                                        and src.c_contiguous):
        ctypes.memmove(target, ctypes.addressof(ctypes.c_char.from_buffer(src)), n)
    else:
        dst[:] = src  # a read-only view: its address is not reachable from Python


class BufferPool:
    """Keeps up to ``keep`` released buffers per size, and ``max_bytes`` in all, for
    :meth:`take`; thread-safe. Buffers past either bound are freed when given back.

    A buffer given back must have no other users left: whoever takes it next overwrites
    it."""

    def __init__(self, keep: int = 8, max_bytes: int = 64 << 20) -> None:
        self.keep = keep
        self.max_bytes = max_bytes
        self._free: dict[int, list[bytearray]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def pooled_bytes(self) -> int:
        """Bytes of the buffers the pool holds now."""
        return self._bytes

    def take(self, size: int) -> bytearray:
        """A buffer of ``size`` bytes (its contents are undefined)."""
        with self._lock:
            free = self._free.get(size)
            if free:
                self._bytes -= size
                return free.pop()
        return bytearray(size)

    def clear(self) -> None:
        """Free every pooled buffer (a process going idle gives the memory back)."""
        with self._lock:
            self._free.clear()
            self._bytes = 0

    def give(self, buf: bytearray) -> None:
        with self._lock:
            free = self._free.setdefault(len(buf), [])
            if len(free) < self.keep and self._bytes + len(buf) <= self.max_bytes:
                free.append(buf)
                self._bytes += len(buf)


POOL = BufferPool()


_malloc_trim = None
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # glibc only
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):
    pass
_trim_lock = threading.Lock()
_trimmed_at = 0.0
# malloc_trim walks every arena; more often than this it would cost more than it saves.
_TRIM_EVERY = 1.0


def trim_heap(force: bool = False) -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``), at most
    once per second unless ``force``; True if it ran. Blocks for up to a few
    milliseconds on a large heap: call it from a worker thread, not an event loop."""
    global _trimmed_at
    if _malloc_trim is None:
        return False
    now = time.monotonic()
    if not force and now - _trimmed_at < _TRIM_EVERY:
        return False
    if not _trim_lock.acquire(blocking=False):
        return False  # another thread is trimming right now
    try:
        _trimmed_at = now
        _malloc_trim(0)
    finally:
        _trim_lock.release()
    return True


def _tune_malloc() -> None:
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; other C libraries go without
    except (OSError, AttributeError):
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD


_tune_malloc()
