"""The content store against the machine's own limits (it has no peer process).

- ingest: one blob written through ``Store.begin_ingest``/``write``/``commit`` with its
  digest verified; the ceiling is the slower of SHA-256 and disk write+fsync;
- read: the blob read back through ``Store.read``; the ceiling is the page-cache read;
- re-ingest: the same bytes again (every piece already stored: hashing and chunking only);
  the ceiling is SHA-256.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.data import pseudo_random
from bench.machine import MachineLimits
from bench.report import Measurement

__all__ = ["bench_cas"]

MiB = 1 << 20


async def _ingest(store, data: bytes, expected) -> float:  # type: ignore[no-untyped-def]
    view = memoryview(data)
    start = time.perf_counter()
    ing = await store.begin_ingest()
    for off in range(0, len(view), 4 * MiB):
        await ing.write(bytes(view[off : off + 4 * MiB]))
    await ing.commit(expected)
    return time.perf_counter() - start


async def _run(root: Path, size: int) -> tuple[float, float, float]:
    from cas import Digest, StoreConfig, open_store

    data = pseudo_random(size, seed=b"cas-blob")
    expected = Digest.of(data)
    store = await open_store(StoreConfig(root))
    try:
        ingest = await _ingest(store, data, expected)
        # Packs are written with O_DIRECT: one untimed read brings the blob into the page
        # cache, where the machine's page-cache figure has its file too.
        async for _ in store.read(expected):
            pass
        start = time.perf_counter()
        received = 0
        async for chunk in store.read(expected):
            received += len(chunk)
        read = time.perf_counter() - start
        if received != size:
            raise RuntimeError(f"read {received} bytes of a {size}-byte blob")
        again = await _ingest(store, data, expected)
    finally:
        await store.close()
    return ingest, read, again


def bench_cas(workdir: Path, machine: MachineLimits, *, size: int) -> list[Measurement]:
    """Measure pybuild's ``cas.Store`` with a ``size``-byte blob stored under ``workdir``."""
    ingest, read, again = asyncio.run(_run(workdir / "store", size))
    mb = size / 1e6
    label = f"{size / MiB:.0f} MiB"
    ceiling_ingest = min(machine.sha256_mb_s, machine.disk_write_fsync_mb_s)
    return [
        Measurement(f"ingest {label} (verify + store)", "MB/s", True,
                    {"machine": ceiling_ingest, "pybuild": round(mb / ingest, 1)},
                    "ceiling: min(SHA-256, disk write+fsync)"),
        Measurement(f"read {label}", "MB/s", True,
                    {"machine": machine.page_cache_read_mb_s, "pybuild": round(mb / read, 1)},
                    "ceiling: page-cache read"),
        Measurement(f"re-ingest {label} (all pieces known)", "MB/s", True,
                    {"machine": machine.sha256_mb_s, "pybuild": round(mb / again, 1)},
                    "ceiling: SHA-256"),
    ]
