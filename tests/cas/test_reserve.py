"""The room a store keeps back (cas.reserve) is written beside the work, not before it."""

import asyncio
import fcntl
import threading
from pathlib import Path

import pytest

import cas.core
from cas import Store
from cas.reserve import RESERVE_FILE, keep_reserve


async def test_a_new_store_opens_without_waiting_for_its_reserve_and_closes_after_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new store's reserve (a 2 MiB write and fsync) does not hold up opening it; close
    waits for it, so a command that ends leaves the whole reserve and no partial file."""
    release = threading.Event()
    started = threading.Event()

    def slow_keep(root: Path) -> None:
        started.set()
        release.wait(30)
        keep_reserve(root)

    monkeypatch.setattr(cas.core, "keep_reserve", slow_keep)
    root = tmp_path / "store"
    store = await asyncio.wait_for(Store.open(root), 20)  # returns while the reserve waits
    assert started.wait(10), "the reserve was not started"
    assert not (root / RESERVE_FILE).exists()
    closing = asyncio.ensure_future(store.close())
    await asyncio.sleep(0.2)
    assert not closing.done(), "close returned before the reserve was written"
    release.set()
    await asyncio.wait_for(closing, 20)
    assert (root / RESERVE_FILE).stat().st_size > 0
    assert [p.name for p in root.iterdir() if p.name.startswith(f".{RESERVE_FILE}")] == []


def test_a_reserve_left_half_written_by_a_killed_process_goes_at_the_next_open(
        tmp_path: Path) -> None:
    """A process killed while writing the reserve (SIGKILL, a CI job's timeout: any
    command, since every one opens the store) leaves ``.reserve.XXXXXXXX``, 2 MiB at
    most; the next one removes it, not the one another process is writing now."""
    root = tmp_path / "store"
    root.mkdir()
    killed = root / ".reserve.k1ll3d00"
    killed.write_bytes(b"\\0" * 4096)
    writing = root / ".reserve.wr1t1ng0"
    writing.write_bytes(b"\\0" * 4096)
    with open(writing, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # as its writer holds it
        keep_reserve(root)
    assert not killed.exists()
    assert writing.exists()
    assert (root / RESERVE_FILE).stat().st_size > 0
