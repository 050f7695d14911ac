"""``storage fsck`` and ``gc`` on a large store: blobs verified on several threads,
progress shown (a bar or status line on a terminal, plain lines in logs, JSON events with
--json), damage found the same."""

import io
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import cas.cli_progress
from builder.cli import main
from cas import Store
from cas.cli_progress import FsckView, GcView
from cas.maintenance import FsckProgress, GcProgress


async def _blobs(store: Store, n: int) -> list[int]:
    """``n`` blobs that share a 2 MiB run (their pieces are shared), and their sizes."""
    shared = os.urandom(2 << 20)
    sizes = []
    for i in range(n):
        data = os.urandom(300_000 + i) + shared + bytes([i])
        await store.put(data, link=f"b{i}")
        sizes.append(len(data))
    return sizes


async def test_progress_counts_every_blob_and_its_bytes_up_to_the_whole(store: Store) -> None:
    sizes = await _blobs(store, 12)
    seen: list[FsckProgress] = []
    report = await store.fsck(progress=seen.append)
    assert report.ok, report.problems
    assert [p.blobs_done for p in seen] == list(range(1, 13))
    assert all(p.blobs == 12 and p.bytes == sum(sizes) for p in seen)
    done = [p.bytes_done for p in seen]
    assert done == sorted(done) and done[-1] == sum(sizes)


async def test_a_damaged_shared_piece_is_named_once_and_every_blob_using_it(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s")
    await _blobs(store, 8)
    await store.close()
    # Flip a byte in the middle of the 2 MiB run every blob shares (the first pack's
    # bytes after its first blob's own 300 KB): one piece is damaged, used by all 8.
    pack = max((tmp_path / "s" / "packs").glob("*/*.pack"), key=lambda p: p.stat().st_size)
    raw = bytearray(pack.read_bytes())
    raw[300_000 + (1 << 20)] ^= 0xFF
    pack.write_bytes(bytes(raw))
    store = await Store.open(tmp_path / "s")
    try:
        report = await store.fsck()
    finally:
        await store.close()
    pieces = [p for p in report.problems if p.startswith("piece ")]
    blobs = [p for p in report.problems if p.startswith("blob ")]
    assert len(pieces) == 1 and "do not match its BLAKE3 key" in pieces[0], report.problems
    assert len(blobs) == 8 and all(p.endswith("is damaged") for p in blobs), report.problems


def test_json_keeps_stdout_one_object_and_sends_progress_events_to_stderr(tmp_path: Path) -> None:
    import asyncio

    async def fill() -> list[int]:
        async with await Store.open(tmp_path) as s:
            return await _blobs(s, 5)

    sizes = asyncio.run(fill())
    result = CliRunner().invoke(main, ["storage", "fsck", "--storage", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["blobs_checked"] == 5
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert events and all(e["event"] == "progress" for e in events)
    assert events[-1]["bytes_done"] == events[-1]["bytes"] == sum(sizes)
    assert events[-1]["blobs_done"] == 5


def test_plain_lines_only_for_a_check_that_lasts(monkeypatch: pytest.MonkeyPatch) -> None:
    quick = io.StringIO()
    view = FsckView("plain", quick)
    for i in range(1, 4):
        view.update(FsckProgress(i, 3, i * 10, 30))
    assert quick.getvalue() == "", "a short check printed progress lines"
    monkeypatch.setattr(cas.cli_progress, "_PLAIN_EVERY", 0.0)
    slow = io.StringIO()
    view = FsckView("plain", slow)
    view.update(FsckProgress(1, 4, 3 << 30, 12 << 30))
    view.update(FsckProgress(4, 4, 12 << 30, 12 << 30))
    assert slow.getvalue().splitlines() == [
        "fsck: 3.0 GiB of 12.0 GiB (25 %), 1 of 4 blobs",
        "fsck: 12.0 GiB of 12.0 GiB (100 %), 4 of 4 blobs",
    ]


def test_a_terminal_gets_a_bar_redrawn_in_place_and_cleared() -> None:
    out = io.StringIO()
    view = FsckView("tty", out)
    view.update(FsckProgress(1, 2, 5, 10))
    view.update(FsckProgress(2, 2, 10, 10))
    view.close()
    text = out.getvalue()
    assert "\n" not in text
    assert "verifying [" + "=" * 12 in text and "5 B of 10 B (50 %)" in text
    assert "(100 %), 2 of 2 blobs" in text
    assert text.endswith("\r\x1b[K")


async def test_gc_reports_each_phase_and_what_it_removed(store: Store) -> None:
    kept = await store.put(os.urandom(400_000), link="keep")
    for i in range(3):
        info = await store.put(os.urandom(300_000 + i), link=f"go{i}")
        assert await store.unlink(f"go{i}", info.digest)
    seen: list[GcProgress] = []
    report = await store.gc(grace=0, progress=seen.append)
    phases = [p.phase for p in seen]
    assert phases.index("blobs") < phases.index("pieces") < phases.index("space")
    assert max(p.done for p in seen if p.phase == "blobs") == report.blobs_removed == 3
    assert max(p.done for p in seen if p.phase == "pieces") == report.pieces_removed
    assert await store.stat(kept.digest) is not None


def test_gc_json_keeps_stdout_one_object_and_sends_phases_to_stderr(tmp_path: Path) -> None:
    import asyncio

    async def fill() -> None:
        async with await Store.open(tmp_path) as s:
            info = await s.put(os.urandom(500_000), link="a")
            assert await s.unlink("a", info.digest)

    asyncio.run(fill())
    result = CliRunner().invoke(main, ["storage", "gc", "--storage", str(tmp_path), "--grace", "0",
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["blobs_removed"] == 1
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert {"event": "progress", "phase": "blobs", "done": 1, "total": None} in events
    assert [e["phase"] for e in events].count("space") == 1


def test_a_terminal_gets_the_gc_phase_redrawn_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    view = GcView("tty", out)
    view.update(GcProgress("blobs", 0))
    view.update(GcProgress("blobs", 7))  # within the redraw interval: not drawn
    view.update(GcProgress("pieces", 0))  # a new phase: drawn at once
    view.update(GcProgress("packs", 2, 2))  # the last of a known total: drawn
    view.close()
    text = out.getvalue()
    assert "\n" not in text
    assert text.split("\r\x1b[K")[1:] == ["gc: removing blobs: 0", "gc: removing pieces: 0",
                                            "gc: compacting packs: 2 of 2", ""]
    monkeypatch.setattr(cas.cli_progress, "_PLAIN_EVERY", 0.0)
    log = io.StringIO()
    GcView("plain", log).update(GcProgress("pieces", 5000))
    assert log.getvalue() == "gc: removing pieces: 5000\n"
