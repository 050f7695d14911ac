"""A parked ingest (an idle upload session) holds no buffers, and goes on where it was."""

from __future__ import annotations

import os
import random
from pathlib import Path

from cas import Digest, Store
from cas.buffers import BufferPool, trim_heap


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _blob(size: int) -> bytes:
    # Half random, half text-like: the pieces of the second half are zstd-compressed,
    # so the ingest has used its compression contexts before it is parked.
    rnd = random.Random(size)
    return rnd.randbytes(size // 2) + b"".join(
        b"line %d of a text file\n" % rnd.randrange(1000) for _ in range(size // 40)
    )[: size - size // 2]


async def test_a_parked_ingest_holds_no_buffers_and_resumes(store: Store) -> None:
    data = _blob(9 << 20)
    await store.put(data[:3_500_000])  # opens what the store opens once (its reader)
    fds = _open_fds()
    parked = []
    for i in range(20):
        ing = await store.begin_ingest()
        await ing.write(data[: 3_500_000 + i])
        await ing.park()
        parked.append(ing)
    assert all(ing.parked for ing in parked)
    for ing in parked:
        assert len(ing._cutter._buf) == 0, "the cutter's buffer went back to the pool"
        assert ing._writer is None and ing._zstd is None and ing._zprobe is None
        assert not ing._pending and not ing._inflight
    assert _open_fds() <= fds, "a parked ingest keeps no pack open"
    for i, ing in enumerate(parked):
        await ing.write(data[3_500_000 + i :])
        assert not ing.parked
        await ing.park()  # parked twice on the way: still the same blob
        info = await ing.commit(Digest.of(data))
        assert info.size == len(data)
    assert await store.read_bytes(Digest.of(data)) == data
    assert (await store.fsck()).ok


async def test_a_parked_ingest_survives_a_restart(tmp_path: Path) -> None:
    data = _blob(5 << 20)
    store = await Store.open(tmp_path / "s")
    ing = await store.begin_ingest()
    await ing.write(data[:3_000_000])
    await ing.park()
    await store.close()
    store = await Store.open(tmp_path / "s")
    try:
        ing = await store.resume_ingest(ing.id)
        assert ing.offset == 3_000_000
        await ing.write(data[3_000_000:])
        await ing.commit(Digest.of(data))
        assert await store.read_bytes(Digest.of(data)) == data
    finally:
        await store.close()


def test_the_pool_is_bounded_in_bytes() -> None:
    pool = BufferPool(keep=8, max_bytes=250)
    bufs = [pool.take(100) for _ in range(4)]
    for b in bufs:
        pool.give(b)
    assert pool.pooled_bytes == 200
    pool.take(100)
    assert pool.pooled_bytes == 100


def test_trim_heap_runs_at_most_once_a_second_unless_forced() -> None:
    assert trim_heap(force=True)
    assert not trim_heap()
    assert trim_heap(force=True)


async def test_a_small_write_to_a_parked_ingest_is_kept_by_the_next_park(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s")
    ing = await store.begin_ingest()
    await ing.park()
    await ing.write(b"a few bytes")  # gathered, not yet handed to the threads
    assert not ing.parked
    await ing.park()
    await store.close()
    store = await Store.open(tmp_path / "s")
    try:
        assert (await store.resume_ingest(ing.id)).offset == len(b"a few bytes")
    finally:
        await store.close()


async def test_every_checkpoint_resumes(store: Store) -> None:
    # The pieces re-cut from a checkpoint's pieces and tail are the recorded ones,
    # however the stream was fed before (here: one 4 MiB write; the resume feeds it
    # piece by piece).
    for i in range(20):
        data = random.Random(i).randbytes(4 << 20)
        ing = await store.begin_ingest()
        await ing.write(data)
        await ing.checkpoint()
        resumed = await store.resume_ingest(ing.id)
        assert resumed.offset == len(data)
        await resumed.write(b"more")
        info = await resumed.commit(Digest.of(data + b"more"))
        assert await store.read_bytes(info.digest) == data + b"more"


def test_the_pool_can_be_emptied() -> None:
    pool = BufferPool()
    pool.give(pool.take(100))
    assert pool.pooled_bytes == 100
    pool.clear()
    assert pool.pooled_bytes == 0
