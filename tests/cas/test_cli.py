import asyncio
import json
import os
import re
from pathlib import Path

from click.testing import CliRunner

from builder.cli import main
from cas import Store


def _fill(root: Path) -> bytes:
    # Large enough that the one piece an edit changes (up to 1 MiB) cannot decide the ratio.
    data = os.urandom(8 << 20)

    async def run() -> None:
        async with await Store.open(root) as s:
            await s.put(data, link="a")
            await s.put(data[:100] + b"!" + data[100:], link="b")
            await s.put(os.urandom(1000))  # unlinked

    asyncio.run(run())
    return data


def test_stats_json_reports_dedup(tmp_path: Path) -> None:
    _fill(tmp_path)
    result = CliRunner().invoke(main, ["storage", "stats", "--storage", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["blobs"] == 3
    assert stats["logical_bytes"] == 2 * (8 << 20) + 1 + 1000
    assert stats["dedup_ratio"] > 1.5
    human = CliRunner().invoke(main, ["storage", "stats", "--storage", str(tmp_path)])
    assert "dedup ratio:" in human.output


def test_storage_defaults_to_the_environment(tmp_path: Path) -> None:
    _fill(tmp_path)
    result = CliRunner().invoke(main, ["storage", "stats", "--json"], env={"PYBUILD_STORAGE": str(tmp_path)})
    assert json.loads(result.output)["blobs"] == 3


def test_gc_removes_unlinked_blobs(tmp_path: Path) -> None:
    _fill(tmp_path)
    result = CliRunner().invoke(main, ["storage", "gc", "--storage", str(tmp_path), "--grace", "0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["blobs_removed"] == 1


def test_gc_says_what_it_kept_only_for_the_grace(tmp_path: Path) -> None:
    _fill(tmp_path)  # one unlinked blob of 1,000 bytes, committed just now
    base = ["storage", "gc", "--storage", str(tmp_path)]
    result = CliRunner().invoke(main, [*base, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["blobs_removed"], doc["blobs_kept_by_grace"], doc["bytes_kept_by_grace"]) == (0, 1, 1000)
    human = CliRunner().invoke(main, [*base, "--grace", "30m"])
    assert "kept 1 unreferenced blobs (1000 B) younger than --grace 1800s" in human.output, human.output
    gone = CliRunner().invoke(main, [*base, "--grace", "0", "--json"])
    doc = json.loads(gone.stdout)
    assert (doc["blobs_removed"], doc["blobs_kept_by_grace"], doc["bytes_kept_by_grace"]) == (1, 0, 0)
    assert "kept" not in CliRunner().invoke(main, base).output


def test_fsck_exit_code_and_names_damage(tmp_path: Path) -> None:
    _fill(tmp_path)
    ok = CliRunner().invoke(main, ["storage", "fsck", "--storage", str(tmp_path)])
    assert ok.exit_code == 0 and "clean" in ok.output
    pack = next((tmp_path / "packs").glob("*/*.pack"))
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 1
    pack.write_bytes(bytes(raw))
    bad = CliRunner().invoke(main, ["storage", "fsck", "--storage", str(tmp_path)])
    assert bad.exit_code == 1
    assert "damaged: piece" in bad.output
    js = CliRunner().invoke(main, ["storage", "fsck", "--storage", str(tmp_path), "--json"])
    assert js.exit_code == 1 and json.loads(js.stdout)["ok"] is False


def test_gc_aborts_interrupted_transfers_idle_past_the_ingest_ttl(tmp_path: Path) -> None:
    # A pull killed before its first checkpoint leaves an ingest no one names: gc ends
    # it once idle past --ingest-ttl (its bytes freed), and leaves a fresh one alone.
    async def interrupted() -> None:
        async with await Store.open(tmp_path) as s:
            ing = await s.begin_ingest()
            await ing.write(os.urandom(4 << 20))
            await ing.checkpoint()

    asyncio.run(interrupted())
    fresh = CliRunner().invoke(main, ["storage", "gc", "--storage", str(tmp_path), "--json"])
    assert json.loads(fresh.stdout)["ingests_expired"] == 0
    stats = CliRunner().invoke(main, ["storage", "stats", "--storage", str(tmp_path), "--json"])
    assert json.loads(stats.output)["open_ingests"] == 1
    old = CliRunner().invoke(main, ["storage", "gc", "--storage", str(tmp_path), "--ingest-ttl", "0"])
    assert old.exit_code == 0, old.output
    freed = re.search(r"aborted 1 interrupted transfers, freed ([0-9.]+) MiB", old.output)
    assert freed is not None and float(freed.group(1)) > 3, old.output
    stats = CliRunner().invoke(main, ["storage", "stats", "--storage", str(tmp_path), "--json"])
    assert json.loads(stats.output)["open_ingests"] == 0
    assert json.loads(stats.output)["disk_bytes"] < 1 << 20


def test_gc_reads_its_time_spans_as_durations(tmp_path: Path) -> None:
    # --grace and --ingest-ttl take 30m, 24h, 7d and 0s, as retention options do.
    async def interrupted() -> None:
        async with await Store.open(tmp_path) as s:
            ing = await s.begin_ingest()
            await ing.write(os.urandom(1 << 20))
            await ing.checkpoint()

    asyncio.run(interrupted())
    base = ["storage", "gc", "--storage", str(tmp_path), "--json", "--grace", "1h30m"]
    kept = CliRunner().invoke(main, [*base, "--ingest-ttl", "7d"])
    assert kept.exit_code == 0, kept.output
    assert json.loads(kept.stdout)["ingests_expired"] == 0
    ended = CliRunner().invoke(main, [*base, "--ingest-ttl", "0s"])
    assert ended.exit_code == 0, ended.output
    assert json.loads(ended.stdout)["ingests_expired"] == 1
