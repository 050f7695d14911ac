"""A store on a read-only file system, opened by code that only reads it (``cas.read_only``).

Real read-only bind mounts of stores filled through the cas API: one closed (no write-ahead
log left) and one still open in this process (its ``-wal`` and ``-shm`` there, as in a
snapshot of a store in use). A store opened ``for_reading`` there reads every blob, counts
and checks them, and refuses every write with the store's own error; opened for writing it
fails at open as before; on a writable file system ``for_reading`` changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import cas.core
from cas import Digest, StoreConfig, open_store
from cas.errors import StorageNotWritable
from cas.holders import image_holder
from cas.lease import held
from testkit.tools import require_root
from tests.helpers.cli import mount_read_only

BLOBS = [os.urandom(3 << 20), b"config" * 100, os.urandom(200_000)]


def _files(root: Path) -> list[tuple[str, int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def _assert_refused(exc: StorageNotWritable, where: Path) -> None:
    message = str(exc)
    for words in (str(where), "read-only file system", "remount it read-write",
                  "--storage DIR or PYBUILD_STORAGE"):
        assert words in message, message


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(storage, view)``: an empty directory for a store and a read-only view of it
    (mounted by the test once the store is filled); unmounted at the end."""
    require_root("mounting file systems needs root")
    storage, view = tmp_path / "storage", tmp_path / "ro"
    storage.mkdir()
    try:
        yield storage, view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False, capture_output=True)


async def _fill(storage: Path) -> list[Digest]:
    store = await open_store(StoreConfig(storage))
    try:
        return [(await store.put(data, link=image_holder("local/ro:1"))).digest for data in BLOBS]
    finally:
        await store.close()


async def test_a_closed_store_is_read_on_a_read_only_file_system(
        read_only_view: tuple[Path, Path]) -> None:
    storage, view = read_only_view
    digests = await _fill(storage)
    assert not (storage / "meta.db-wal").exists()  # closed: SQLite needs immutable=1 here
    mount_read_only(storage, view)
    before = _files(storage)

    store = await open_store(StoreConfig(view).for_reading())
    try:
        assert store.core.read_only
        for digest, data in zip(digests, BLOBS, strict=True):
            assert await store.read_bytes(digest) == data
            info = await store.stat(digest)
            assert info is not None and info.size == len(data)
        assert sorted(map(str, await store.linked(image_holder("local/ro:1")))) == \
            sorted(map(str, digests))
        stats = await store.stats()
        assert (stats.blobs, stats.logical_bytes, stats.links) == \
            (3, sum(map(len, BLOBS)), 3)
        report = await store.fsck()
        assert report.ok, report.problems
        assert report.blobs_checked == 3
        assert any("read-only file system" in n and "nothing can be repaired" in n
                   for n in report.notes), report.notes
        # A reader of a local image holds nothing on a read-only store (and needs not).
        async with held(store, digests):
            assert await store.read_bytes(digests[1]) == BLOBS[1]
        for write in (lambda: store.put(b"new"), lambda: store.link("x", digests[0]),
                      lambda: store.delete(digests[0]), lambda: store.gc(grace=0),
                      lambda: store.unlink(image_holder("local/ro:1"), digests[0])):
            with pytest.raises(StorageNotWritable) as refused:
                await write()
            _assert_refused(refused.value, view / "meta.db")
    finally:
        await store.close()
    assert _files(storage) == before


async def test_a_store_in_use_is_read_through_its_log(read_only_view: tuple[Path, Path]) -> None:
    """A read-only view of a directory another process writes (or a snapshot of a store
    in use): its ``-wal`` holds commits the database file has not, and they are read."""
    storage, view = read_only_view
    writer = await open_store(StoreConfig(storage))
    try:
        first = await writer.put(BLOBS[0], link="repo:a")
        assert (storage / "meta.db-wal").stat().st_size > 0
        mount_read_only(storage, view)
        reader = await open_store(StoreConfig(view).for_reading())
        try:
            assert reader.core.read_only
            assert await reader.read_bytes(first.digest) == BLOBS[0]
            later = await writer.put(BLOBS[2], link="repo:a")  # committed after it opened
            assert await reader.read_bytes(later.digest) == BLOBS[2]
            assert (await reader.stats()).blobs == 2
            assert (await reader.fsck()).ok
        finally:
            await reader.close()
    finally:
        await writer.close()


async def test_opening_for_writing_is_refused_as_before(read_only_view: tuple[Path, Path]) -> None:
    storage, view = read_only_view
    await _fill(storage)
    mount_read_only(storage, view)
    before = _files(storage)
    with pytest.raises(StorageNotWritable) as refused:
        await open_store(StoreConfig(view))
    _assert_refused(refused.value, view / "meta.db")
    assert _files(storage) == before


async def test_read_only_file_system_met_at_open_is_read_only(
        read_only_view: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses writes (EROFS) without saying so in statvfs: the
    read-write open fails, writing nothing, and the store opens read-only."""
    storage, view = read_only_view
    digests = await _fill(storage)
    mount_read_only(storage, view)
    monkeypatch.setattr(cas.core, "on_read_only_fs", lambda _path: False)
    store = await open_store(StoreConfig(view).for_reading())
    try:
        assert store.core.read_only
        assert await store.read_bytes(digests[2]) == BLOBS[2]
    finally:
        await store.close()


async def test_for_reading_on_a_writable_file_system_changes_nothing(tmp_path: Path) -> None:
    """Crash consistency is not traded away: a writable store opened for reading is the
    usual one (WAL mode, writes taken)."""
    digests = await _fill(tmp_path / "storage")
    store = await open_store(StoreConfig(tmp_path / "storage").for_reading())
    try:
        assert not store.core.read_only
        assert await store.read_bytes(digests[0]) == BLOBS[0]
        info = await store.put(b"written", link="repo:b")
        assert await store.read_bytes(info.digest) == b"written"
        assert (tmp_path / "storage" / "meta.db-wal").exists()
    finally:
        await store.close()


@pytest.mark.parametrize("mounted", ["read-only", "read-write"])
async def test_fsck_reports_space_waiting_to_be_freed(
        read_only_view: tuple[Path, Path], mounted: str) -> None:
    """A store whose last gc stopped before giving space back (pieces in the trash), as a
    backup taken then holds it: fsck reports it. (Fsck reads the trash through its
    snapshot, and reading the trash syncs the database's files first.)"""
    storage, view = read_only_view
    store = await open_store(StoreConfig(storage))
    try:
        kept = await store.put(BLOBS[1], link="repo:kept")
        await store.put(BLOBS[2])  # linked by nothing: the gc below removes it
        meta = store.core.meta
        assert await store.core.run(meta.collect_blobs, time.time() + 60) == 1
        assert (await store.core.run(meta.collect_pieces))[0] > 0
        assert await store.core.run(meta.trash)  # the gc "stopped" here
    finally:
        await store.close()
    config = StoreConfig(storage)
    if mounted == "read-only":
        mount_read_only(storage, view)
        config = StoreConfig(view).for_reading()
    store = await open_store(config)
    try:
        report = await store.fsck()
        assert report.ok, report.problems
        assert report.blobs_checked == 1
        assert any("waiting to be freed" in n for n in report.notes), report.notes
        assert any("read-only file system" in n for n in report.notes) == (mounted == "read-only")
        assert await store.read_bytes(kept.digest) == BLOBS[1]
    finally:
        await store.close()
