"""cas.chain.JobChain: ordered jobs on a thread pool, awaited from asyncio."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cas.chain import JobChain


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=4) as p:
        yield p


async def test_jobs_run_in_order_one_at_a_time(pool: ThreadPoolExecutor) -> None:
    chain = JobChain(pool)
    seen: list[int] = []
    running = threading.Semaphore(1)

    def job(i: int) -> None:
        assert running.acquire(blocking=False), "two jobs of one chain ran at once"
        try:
            seen.append(i)
        finally:
            running.release()

    futures = [chain.submit(job, i) for i in range(200)]
    await asyncio.gather(*futures)
    assert seen == list(range(200))
    assert chain.last is futures[-1]


async def test_queued_jobs_continue_on_the_same_thread(pool: ThreadPoolExecutor) -> None:
    chain = JobChain(pool)
    gate = threading.Event()
    threads: list[int] = []

    def job(_: None) -> None:
        gate.wait(5)
        threads.append(threading.get_ident())

    futures = [chain.submit(job, None) for _ in range(5)]  # all queued behind the first
    gate.set()
    await asyncio.gather(*futures)
    assert len(set(threads)) == 1


async def test_two_chains_run_in_parallel(pool: ThreadPoolExecutor) -> None:
    a, b = JobChain(pool), JobChain(pool)
    met = threading.Barrier(2, timeout=5)
    # Each job waits for the other chain's job: only possible when both run at once.
    await asyncio.gather(a.submit(lambda _: met.wait(), None), b.submit(lambda _: met.wait(), None))


async def test_a_failure_fails_every_later_job_without_running_it(pool: ThreadPoolExecutor) -> None:
    chain = JobChain(pool)
    ran: list[int] = []

    def job(i: int) -> None:
        ran.append(i)
        if i == 1:
            raise OSError(28, "No space left on device")

    futures = [chain.submit(job, i) for i in range(4)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[0] is None
    assert all(isinstance(r, OSError) for r in results[1:])
    assert ran == [0, 1]
    with pytest.raises(OSError):
        await chain.submit(job, 9)
    assert ran == [0, 1]


async def test_an_idle_chain_starts_again(pool: ThreadPoolExecutor) -> None:
    chain = JobChain(pool)
    seen: list[int] = []
    for i in range(3):
        await chain.submit(seen.append, i)  # the chain drains and stops between jobs
    assert seen == [0, 1, 2]


async def test_a_refused_job_fails_its_future_instead_of_leaving_it_pending() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    pool.shutdown()
    chain = JobChain(pool)
    with pytest.raises(RuntimeError):
        chain.submit(lambda _: None, None)
    # Whoever waits for the chain's last job (an ingest that quiesces) must not hang.
    assert chain.last is not None
    results = await asyncio.wait_for(asyncio.gather(chain.last, return_exceptions=True), 5)
    assert isinstance(results[0], RuntimeError)
