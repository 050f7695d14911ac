"""The store's core: Ingest and maintenance work on a StoreCore alone, and its shared
operations keep their contracts."""

from __future__ import annotations

from pathlib import Path

import pytest

from cas import FsckReport, GcReport, Stats, Store, StoreConfig
from cas.core import StoreCore
from cas.errors import StoreClosed
from cas.ingest import Ingest
from cas.maintenance import check, collect_garbage, statistics


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
