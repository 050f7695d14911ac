"""The suite every upload-session lock implementation must pass (upload_locks.py).

``locks`` gives two handles on one implementation's scope (for the in-process one the same
object; a cross-process one opens two handles on the shared database): what one holds,
the other must wait for.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.server.upload_locks import InProcessUploadLocks, UploadLocks
from registry.server.upload_locks_file import FileUploadLocks
from registry.server.upload_locks_pg import PgUploadLocks
from testkit.postgres import PostgresServer


@pytest.fixture(params=["in-process", "file", "postgres"])
async def locks(request: pytest.FixtureRequest,
                tmp_path: Path) -> AsyncIterator[tuple[UploadLocks, UploadLocks]]:
    if request.param == "in-process":
        shared = InProcessUploadLocks()
        yield shared, shared
        return
    if request.param == "file":  # two processes' handles on one storage directory
        first, second = FileUploadLocks.at(tmp_path), FileUploadLocks.at(tmp_path)
        try:
            yield first, second
        finally:
            first.close()
            second.close()
        return
    # two replicas' handles on one database
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database(f"locks_{uuid.uuid4().hex[:12]}")
    a, b = await PgUploadLocks.open(url), await PgUploadLocks.open(url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _held_by_other(locks: UploadLocks, upload_id: str) -> bool:
    """Whether ``upload_id`` is held: a try to take it does not succeed within 50 ms."""
    async def take() -> None:
        async with locks.hold(upload_id):
            pass

    try:
        await asyncio.wait_for(take(), 0.05)
    except TimeoutError:
        return True
    return False


async def _free(locks: UploadLocks, upload_id: str) -> bool:
    """Whether ``upload_id`` is free: it can be taken (a database round trip on a busy
    machine may take longer than :func:`_held_by_other` waits, so this waits longer)."""
    async def take() -> None:
        async with locks.hold(upload_id):
            pass

    try:
        await asyncio.wait_for(take(), 30)
    except TimeoutError:
        return False
    return True


async def test_one_holder_per_session_and_sessions_are_independent(locks):
    a, b = locks
    async with a.hold("u1"):
        assert await _held_by_other(b, "u1")
        assert await _free(b, "u2")
    assert await _free(b, "u1")


async def test_holders_never_overlap(locks):
    a, b = locks
    inside = 0
    most = 0

    async def work(handle: UploadLocks) -> None:
        nonlocal inside, most
        async with handle.hold("u1"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.001)
            inside -= 1

    await asyncio.gather(*(work((a, b)[i % 2]) for i in range(20)))
    assert most == 1


async def test_released_on_exception_and_on_cancellation(locks):
    a, b = locks
    with pytest.raises(RuntimeError):
        async with a.hold("u1"):
            raise RuntimeError("the request failed")
    assert await _free(b, "u1")

    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with a.hold("u1"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold_forever())
    await entered.wait()
    assert await _held_by_other(b, "u1")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _free(b, "u1")


async def test_a_waiter_cancelled_before_acquiring_never_holds(locks):
    a, b = locks
    acquired = False

    async def wait_then_hold() -> None:
        nonlocal acquired
        async with b.hold("u1"):
            acquired = True

    async with a.hold("u1"):
        waiter = asyncio.create_task(wait_then_hold())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert not acquired
    assert await _free(a, "u1")


async def test_forget_keeps_the_session_exclusive_while_it_is_held(locks):
    a, b = locks
    async with a.hold("u1"):
        a.forget("u1")  # the session ended inside its own request, as a commit does
        assert await _held_by_other(b, "u1")
    assert await _free(b, "u1")


async def test_in_process_locks_keep_nothing_for_idle_sessions():
    locks = InProcessUploadLocks()
    async with locks.hold("u1"), locks.hold("u2"):
        assert len(locks) == 2
    await asyncio.gather(*(_held_by_other(locks, f"u{i}") for i in range(10)))
    assert len(locks) == 0
