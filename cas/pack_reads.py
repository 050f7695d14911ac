"""Pieces read in runs to be hashed: what a commit from a recipe reads.

A blob committed from known pieces (a pull assembled from its recipe, a piece-level
push) is verified by hashing every byte of it, in order. Its pieces mostly lie end to
end in a few packs (the layer it updates was stored in order), so reading them one by
one (an open, a read and a close per piece, a fresh buffer each) costs more than the
hashing: :func:`hash_locations` reads each run of raw pieces that lie end to end in one
local pack with one ``preadv`` into a reused buffer, and hashes it while it is in the
cache. Anything else (inline, compressed, remote pieces) is loaded piece by piece.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import StoreCorrupt
from .meta import CODEC_RAW, Location

if TYPE_CHECKING:
    from .core import StoreCore
    from .digest import Hasher

__all__ = ["READ_RUN", "hash_locations", "prefetch_locations"]

# Bytes of pieces read in one call, at most (they are hashed while in the cache).
READ_RUN = 4 << 20


# Read buffers kept for the next call (a fresh 4 MiB buffer costs a page fault per page
# on first use): at most _KEPT, whatever the number of threads that hash.
_KEPT = 4
_spare: list[memoryview] = []
_spare_lock = threading.Lock()


def prefetch_locations(core: StoreCore, locs: Sequence[Location]) -> None:
    """Ask the kernel to start reading the local packs' ranges of ``locs`` into the page
    cache (``POSIX_FADV_WILLNEED``, which returns without waiting), so that the hashing
    that follows finds them there. Packs are written with O_DIRECT, so the pieces of a
    layer pulled earlier are on the disk only: read one run at a time, each read would
    wait for the device. Best effort: errors are ignored (the hashing reports them)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    runs: dict[str, list[list[int]]] = {}
    for loc in locs:
        if loc.pack is None or loc.data is not None or loc.codec != CODEC_RAW:
            continue
        spans = runs.setdefault(loc.pack, [])
        if spans and spans[-1][1] == loc.offset:
            spans[-1][1] = loc.offset + loc.stored
        else:
            spans.append([loc.offset, loc.offset + loc.stored])
    for pack, spans in runs.items():
        path = core.packs.local_path(pack)
        if path is None:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            for start, end in spans:
                advise(fd, start, end - start, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def hash_locations(core: StoreCore, hasher: Hasher, locs: Sequence[Location]) -> None:
    """Feed the pieces at ``locs`` to ``hasher``, in order, reading runs into one reused
    buffer. StoreCorrupt when a pack is missing or short."""
    with _spare_lock:
        buf = _spare.pop() if _spare else None
    if buf is None:
        buf = memoryview(bytearray(READ_RUN))
    try:
        _hash_runs(core, hasher, locs, buf)
    finally:
        with _spare_lock:
            if len(_spare) < _KEPT:
                _spare.append(buf)


def _hash_runs(core: StoreCore, hasher: Hasher, locs: Sequence[Location], buf: memoryview) -> None:
    run: list[Location] = []
    fds: dict[str, int] = {}

    def flush() -> None:
        if not run:
            return
        pack, start = run[0].pack, run[0].offset
        n = run[-1].offset + run[-1].stored - start
        assert pack is not None
        run.clear()
        fd = fds.get(pack)
        if fd is None:
            path = core.packs.local_path(pack)
            if path is None:
                hasher.update(core.packs.read(pack, start, n))
                return
            fd = fds[pack] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        got = os.preadv(fd, [buf[:n]], start)
        if got != n:
            raise StoreCorrupt(f"pack {pack} is short: wanted {n} bytes at {start}, got {got}")
        hasher.update(buf[:n])

    try:
        for loc in locs:
            if loc.pack is not None and loc.data is None and loc.codec == CODEC_RAW:
                if run and (run[-1].pack != loc.pack
                            or run[-1].offset + run[-1].stored != loc.offset
                            or loc.offset + loc.stored - run[0].offset > READ_RUN):
                    flush()
                if loc.stored > READ_RUN:  # a piece larger than the buffer: alone
                    flush()
                    hasher.update(core.load(loc))
                    continue
                run.append(loc)
                continue
            flush()
            hasher.update(core.load(loc))
        flush()
    except FileNotFoundError as exc:
        raise StoreCorrupt("a pack of the pieces is missing") from exc
    finally:
        for fd in fds.values():
            os.close(fd)
