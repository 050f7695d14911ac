"""The machine's own limits, measured in the same run as the benchmarks they bound.

A registry cannot ingest faster than SHA-256 hashes (every byte is verified), nor commit
faster than the disk writes and fsyncs, nor serve from cache faster than the page cache
reads; these numbers say how close to the ceiling a result is.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import blake3

from bench.data import pseudo_random

__all__ = ["MachineLimits", "measure_machine"]

MiB = 1 << 20


@dataclass(frozen=True)
class MachineLimits:
    """Throughputs in MB/s (10^6 bytes per second) and the machine's CPU count."""

    cpus: int
    sha256_mb_s: float
    blake3_mb_s: float
    disk_write_fsync_mb_s: float
    page_cache_read_mb_s: float

    def to_json(self) -> dict[str, float | int]:
        return asdict(self)


def _best_rate(nbytes: int, seconds: list[float]) -> float:
    return nbytes / min(seconds) / 1e6


def _hash_rate(make: Callable[[], Any], data: bytes, rounds: int = 3) -> float:
    view = memoryview(data)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        h = make()
        for off in range(0, len(view), 4 * MiB):
            h.update(view[off : off + 4 * MiB])
        h.digest()
        times.append(time.perf_counter() - start)
    return _best_rate(len(data), times)


def measure_machine(workdir: Path, *, hash_mib: int = 256, disk_mib: int = 512) -> MachineLimits:
    """Measure hashing (one thread), disk write+fsync and page-cache read under ``workdir``.

    ``workdir`` should be on the filesystem the registries store to.
    """
    data = pseudo_random(hash_mib * MiB, seed=b"machine")
    sha = _hash_rate(hashlib.sha256, data)
    b3 = _hash_rate(lambda: blake3.blake3(max_threads=1), data)

    path = workdir / "machine-disk.bin"
    chunk = pseudo_random(4 * MiB, seed=b"disk")
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(disk_mib // 4):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    write = (disk_mib // 4) * 4 * MiB / (time.perf_counter() - start) / 1e6

    # The file was just written, so it is in the page cache: this measures memory copies.
    buf = bytearray(4 * MiB)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
        times.append(time.perf_counter() - start)
    read = _best_rate(path.stat().st_size, times)
    path.unlink()
    return MachineLimits(
        cpus=os.cpu_count() or 1,
        sha256_mb_s=round(sha, 1),
        blake3_mb_s=round(b3, 1),
        disk_write_fsync_mb_s=round(write, 1),
        page_cache_read_mb_s=round(read, 1),
    )
