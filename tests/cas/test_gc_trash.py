"""GC gives back the space of dead pieces with one hole per run of them, not one per piece,
and none in a pack it deletes whole."""

import os
from pathlib import Path

import pytest

from cas import Store
from cas.core import _merged
from cas.pack_files import FilesystemPacks


def test_touching_and_overlapping_ranges_of_one_pack_are_joined_and_gaps_kept() -> None:
    ranges = sorted([("a", 0, 10), ("a", 10, 5), ("a", 12, 8), ("a", 30, 1), ("b", 20, 5),
                     ("b", 0, 20)])
    assert list(_merged(ranges)) == [("a", 0, 20), ("a", 30, 1), ("b", 0, 25)]
    assert list(_merged([])) == []


@pytest.fixture
def frees(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    calls: list[tuple[str, int, int]] = []
    real = FilesystemPacks.free

    def counted(self: FilesystemPacks, name: str, offset: int, length: int) -> None:
        calls.append((name, offset, length))
        real(self, name, offset, length)

    monkeypatch.setattr(FilesystemPacks, "free", counted)
    return calls


async def test_the_dead_middle_of_a_live_pack_is_freed_as_one_hole(
        tmp_path: Path, frees: list[tuple[str, int, int]]) -> None:
    """Blob A's pieces lie end to end in its pack; B shares only A's first and last 2 MiB.
    Removing A leaves its middle pieces dead between live ones: one hole for all of them."""
    a = os.urandom(12 << 20)
    async with await Store.open(tmp_path / "s") as store:
        first = await store.put(a, link="a")
        await store.put(a[:2 << 20] + os.urandom(3 << 20) + a[-(2 << 20):], link="b")
        before = await store.stats()
        assert await store.unlink("a", first.digest)
        report = await store.gc(grace=0)
        after = await store.stats()
        assert report.pieces_removed >= 3, "the blob's middle should be several pieces"
        assert len(frees) == 1, frees
        assert frees[0][2] == before.physical_bytes - after.physical_bytes == report.bytes_freed
        assert (await store.fsck()).ok


async def test_a_pack_deleted_whole_gets_no_holes_first(
        tmp_path: Path, frees: list[tuple[str, int, int]]) -> None:
    async with await Store.open(tmp_path / "s") as store:
        info = await store.put(os.urandom(10 << 20), link="a")
        assert await store.unlink("a", info.digest)
        report = await store.gc(grace=0)
        assert report.pieces_removed > 1 and report.bytes_freed >= 10 << 20
        assert frees == []
        assert (await store.stats()).packs == 0
        assert list((tmp_path / "s" / "packs").glob("*/*.pack")) == []
