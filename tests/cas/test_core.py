"""The store's core: Ingest and maintenance work on a StoreCore alone, and its shared
operations keep their contracts."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cas import FsckReport, GcReport, Stats, Store, StoreConfig
from cas.core import StoreCore
from cas.errors import StoreClosed
from cas.ingest import Ingest
from cas.maintenance import check, collect_garbage, statistics
from cas.meta import CODEC_ZSTD, Location, decode_recipe


async def test_ingest_and_maintenance_need_only_the_core(tmp_path: Path) -> None:
    core = await StoreCore.open(StoreConfig(tmp_path / "s", workers=2))
    try:
        await core.run(core.meta.create_ingest, "ing1", "sha256")
        ing = Ingest(core, "ing1", "sha256")
        await ing.write(b"z" * (3 << 20))
        info = await ing.commit()
        assert info.size == 3 << 20
        report = await core.run(check, core, None)
        assert isinstance(report, FsckReport) and report.ok and report.blobs_checked == 1
        stats = await core.run(statistics, core)
        assert isinstance(stats, Stats) and stats.blobs == 1 and stats.disk_bytes > 0
        gc = await core.run(collect_garbage, core, 0.0)
        assert isinstance(gc, GcReport) and gc.blobs_removed == 1  # nothing links it
    finally:
        await core.close()
    with pytest.raises(StoreClosed):
        await core.run(len, b"")
    with pytest.raises(StoreClosed):
        core.receiver_pool()
    await core.close()  # twice is harmless


async def test_the_store_reports_are_typed(store: Store) -> None:
    await store.put(b"kept", link="repo/a")
    assert isinstance(await store.gc(grace=0), GcReport)
    assert isinstance(await store.fsck(), FsckReport)
    assert isinstance(await store.stats(), Stats)


async def test_a_dropped_ingest_takes_its_pack_and_tail_files_with_it(tmp_path: Path) -> None:
    core = await StoreCore.open(StoreConfig(tmp_path / "s", workers=2))
    try:
        def work() -> None:
            core.meta.create_ingest("ing1", "sha256")
            writer = core.new_pack("ing1")
            assert core.meta.is_pack_known(writer.name)
            writer.append(b"p" * 4096)
            writer.close()
            keep = core.tail_path("ing1", 10)
            for offset in (5, 10):
                core.tail_path("ing1", offset).write_bytes(b"t")
            core.drop_tails("ing1", keep=keep)
            assert sorted(p.name for p in (tmp_path / "s" / "ingests").iterdir()) == ["ing1.10.tail"]
            assert writer.name in core.packs.names()
            core.drop_ingest("ing1")
            assert list((tmp_path / "s" / "ingests").iterdir()) == []
            assert writer.name not in core.packs.names()  # the trash was emptied
            assert core.meta.trash() == []

        await core.run(work)
    finally:
        await core.close()


async def test_compressed_pieces_load_right_from_many_threads_at_once(tmp_path: Path) -> None:
    # A zstd decompression context is not safe to share between threads that use it at
    # the same time (each call releases the GIL): pieces of different sizes loaded from
    # eight threads at once must each come back whole and right.
    core = await StoreCore.open(StoreConfig(tmp_path / "s", workers=2))
    try:
        await core.run(core.meta.create_ingest, "ing1", "sha256")
        ing = Ingest(core, "ing1", "sha256")
        rnd = random.Random(7)
        for n in range(40):  # compressible text of many sizes: stored as zstd pieces
            words = [rnd.choice(("alpha", "beta", "gamma", "delta")) for _ in range(2000 * (n + 1))]
            await ing.write(" ".join(words).encode())
        info = await ing.commit()
        locs = await core.run(_locations_of, core, str(info.digest))
        assert sum(loc.codec == CODEC_ZSTD for loc in locs) >= 10
        expected = [core.load(loc) for loc in locs]

        def load_all(_: int) -> bool:
            return all(core.load(loc) == want for _ in range(20)
                       for loc, want in zip(locs, expected, strict=True))

        with ThreadPoolExecutor(8) as pool:
            assert all(pool.map(load_all, range(8)))
    finally:
        await core.close()


def _locations_of(core: StoreCore, digest: str) -> list[Location]:
    row = core.meta.blob(digest)
    assert row is not None
    keys = [k for k, _ in decode_recipe(row[1])]
    found = core.meta.locations(keys)
    return [found[k] for k in keys]
