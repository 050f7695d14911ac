"""kill -9 at any point leaves a store that fsck reports clean, with every committed
blob intact, no partial blob visible, and open ingests resumable."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cas import Digest, Store

from .crash_worker import stream

WORKER = Path(__file__).with_name("crash_worker.py")


def run_and_kill(mode: str, root: Path, wait_for: str, delay: float) -> list[list[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), mode, str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[list[str]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"worker died early: {proc.wait()}"
        lines.append(line.split())
        if lines[-1][0] == wait_for:
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate()
    lines += [line.split() for line in rest.splitlines()]
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.13, 0.37, 0.8])
async def test_kill_during_ingest(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "store"
    lines = run_and_kill("ingest", root, "committed", delay + random.random() * 0.2)
    committed = {line[1]: int(line[2]) for line in lines if line[0] == "committed"}
    begun = {line[1]: int(line[2]) for line in lines if line[0] == "begin"}
    assert committed

    store = await Store.open(root)
    try:
        report = await store.fsck()
        assert report.ok, report.problems
        for digest, seed in committed.items():
            assert await store.read_bytes(Digest.parse(digest)) == stream(seed, 3 << 20)
        # A commit may have landed just before the kill, before it was reported; any
        # blob that exists must be one of the streams, whole.
        complete = {str(Digest.of(stream(seed, 3 << 20))) for seed in begun.values()}
        present = {d for d, _, _ in store.meta.iter_blobs()}
        assert set(committed) <= present <= complete, "no partial blob is visible"
        # Every open ingest resumes from its last checkpoint and commits correctly.
        for info in await store.list_ingests():
            if info.id not in begun:
                continue  # begun, but killed before it said so
            data = stream(begun[info.id], 3 << 20)
            ing = await store.resume_ingest(info.id)
            await ing.write(data[ing.offset :])
            done = await ing.commit(Digest.of(data), size=len(data))
            assert await store.read_bytes(done.digest) == data
        await store.expire_ingests(older_than=-1)
        await store.gc(grace=0)
        report = await store.fsck()
        assert report.ok and not report.notes, (report.problems, report.notes)
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
async def test_kill_during_gc(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "store"
    run_and_kill("gc", root, "ready", delay)
    store = await Store.open(root)
    try:
        report = await store.fsck()
        assert report.ok, report.problems
        for seed in range(1, 40, 2):
            data = stream(seed, 200_000)
            assert await store.read_bytes(Digest.of(data)) == data
        # A put cut short by the kill is an open ingest until it expires.
        await store.expire_ingests(older_than=-1)
        await store.gc(grace=0)
        stats = await store.stats()
        assert stats.blobs == 20
        report = await store.fsck()
        assert report.ok and not report.notes, (report.problems, report.notes)
        assert {p.stem for p in (root / "packs").glob("*/*.pack")} == set(store.packs.names())
    finally:
        await store.close()
