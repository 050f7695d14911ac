"""A process that works on a store until it is killed (driven by test_crash.py).

Usage: python crash_worker.py ingest|gc STORE_DIR
Prints one line per durable event, flushed, so the killer knows what must survive.
"""

from __future__ import annotations

import asyncio
import random
import sys

from cas import Digest, Store


def stream(seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    shared = random.Random(0).randbytes(1 << 20)  # every stream shares this: dedup paths run
    return shared + rnd.randbytes(size)


def say(*words: object) -> None:
    print(*words, flush=True)


async def ingest(root: str) -> None:
    store = await Store.open(root)
    seed = 0
    while True:
        seed += 1
        data = stream(seed, 3 << 20)
        ing = await store.begin_ingest()
        say("begin", ing.id, seed)
        for i in range(0, len(data), 700_000):
            await ing.write(data[i : i + 700_000])
            if i % 1_400_000 == 0:
                await ing.checkpoint()
                say("checkpoint", ing.id, ing.offset)
        if seed % 3 == 0:
            continue  # leave it open: the killer resumes it
        info = await ing.commit(Digest.of(data), link=f"keep{seed}")
        say("committed", info.digest, seed)


async def gc(root: str) -> None:
    store = await Store.open(root)
    for seed in range(40):
        await store.put(stream(seed, 200_000), link="keep" if seed % 2 else None)
    say("ready")
    while True:
        await store.gc(grace=0)
        for seed in range(40, 50):
            await store.put(stream(seed, 200_000))


if __name__ == "__main__":
    asyncio.run({"ingest": ingest, "gc": gc}[sys.argv[1]](sys.argv[2]))
