"""The build cache bounds itself (builder.autogc), as BuildKit's garbage collector: after a
build, the least recently used extracted layers, cached steps and cache mounts go until the
cache is within its bound; never what the build used, nor anything while another build runs."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import autogc
from builder.build import BuildOptions, run_build
from builder.cache.entries import CachedLayer
from builder.progress import BuildProgress
from builder.prune import BuildLock, _allocated, _keep_within
from builder.steps.common import BuildError

from .conftest import used_record

ROOT = Path(__file__).resolve().parents[3]


def context(tmp_path: Path, base: str, run: str) -> Path:
    ctx = tmp_path / f"ctx-{abs(hash(run))}"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN {run}\n")
    return ctx


def build(ctx: Path, storage: Path, bound: int | None) -> list[dict[str, object]]:
    """Build; the JSON events it printed."""
    out = io.StringIO()
    try:
        asyncio.run(run_build(BuildOptions(context=ctx, storage=storage, gc_keep_storage=bound),
                              BuildProgress("json", out)))
    except BuildError:
        pass
    return [json.loads(line) for line in out.getvalue().splitlines()]


def old_record(path: Path, days: float, marker: str | None = None) -> Path:
    """An extracted layer (or, with ``marker`` "id", a cache mount) last used ``days`` ago."""
    return used_record(path, time.time() - days * 86400, marker)


def _steps(storage: Path) -> list[tuple[str, str, CachedLayer]]:
    """The cached steps with a layer: ``(key, instruction, layer)``."""
    with sqlite3.connect(storage / "builder" / "cache.db") as db:
        rows = db.execute("SELECT key, instruction, layer FROM steps").fetchall()
    return [(key, what, layer) for key, what, text in rows
            if (layer := CachedLayer.from_json(text)).digest]


def sizes(root: Path) -> dict[str, int]:
    return {p.name: _allocated(p) for p in root.iterdir()} if root.is_dir() else {}


def test_a_build_over_its_bound_removes_the_least_recently_used_first(
    tmp_path: Path, busybox_ref: str,
) -> None:
    storage = tmp_path / "s"
    layers, mounts = storage / "builder" / "snapshots", storage / "builder" / "cache-mounts"
    assert not [e for e in build(context(tmp_path, busybox_ref, "echo one > /one"), storage, 0)
                if e["event"] == "gc"]
    first = sizes(layers)
    base = max(first, key=first.__getitem__)  # the busybox layer: the second build's too
    run_one = next(name for name in first if name != base)
    oldest = old_record(layers / ("a" * 64), 3)
    mount = old_record(mounts / ("m" * 16), 2, "id")
    older = old_record(layers / ("b" * 64), 1)
    # room for what the second build uses (its RUN layer is as large as the first's), the
    # first build's RUN layer and one of the old records: the two oldest must go
    bound = first[base] + 2 * first[run_one] + _allocated(older) + 16 * 1024
    events = build(context(tmp_path, busybox_ref, "echo two > /two"), storage, bound)
    left = sizes(layers)
    assert not oldest.exists() and not mount.exists()
    assert {base, run_one, older.name} < set(left) and len(left) == 4  # and the new RUN's
    assert sum(left.values()) <= bound
    gc = [e for e in events if e["event"] == "gc"]
    assert len(gc) == 1
    assert (gc[0]["extracted_layers"], gc[0]["cache_mounts"], gc[0]["keep_storage"]) == (1, 1, bound)
    steps = sum(layer.size for _, _, layer in _steps(storage))  # the cached steps' blobs
    assert gc[0]["left_bytes"] == sum(left.values()) + steps
    assert "removed the least recently used 1 extracted layer and 1 cache mount (" in \
        str(gc[0]["message"])

    # a build that fails is followed by a collection too; what it used stays even when
    # that alone is over the bound
    events = build(context(tmp_path, busybox_ref, "exit 3"), storage, 1)
    assert events[-1]["event"] == "gc"
    assert set(sizes(layers)) == {base}  # the failed RUN's parent


def test_off_keeps_everything_and_a_bad_bound_is_refused(tmp_path: Path, busybox_ref: str) -> None:
    storage = tmp_path / "s"
    ctx = context(tmp_path, busybox_ref, "echo one > /one")
    oldest = old_record(storage / "builder" / "snapshots" / ("a" * 64), 3)
    argv = [sys.executable, "-m", "builder", "build", "--storage", str(storage),
            "--progress", "plain", str(ctx)]

    def run(*args: str, env: str | None = None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k != autogc.ENV}
        if env is not None:
            environ[autogc.ENV] = env
        return subprocess.run([*argv[:-1], *args, argv[-1]], cwd=ROOT, capture_output=True,
                              text=True, check=False, env=environ)

    for off in (run(env="off"), run("--gc-keep-storage", "0", "--no-cache")):
        assert off.returncode == 0, off.stderr
        assert oldest.exists() and "build cache over" not in off.stderr
    bad = run(env="lots")
    assert bad.returncode == 2
    assert "'lots' is not a size such as 512m or 10g (binary units), or 0 or off" in bad.stderr
    assert "PYBUILD_GC_KEEP_STORAGE" in bad.stderr
    on = run("--gc-keep-storage", "1k", "--no-cache", env="off")  # the option wins
    assert on.returncode == 0, on.stderr
    assert not oldest.exists()
    lines = [line for line in on.stderr.splitlines() if "build cache over" in line]
    # the first builds' RUN layers too (--no-cache: a new one each time)
    assert len(lines) == 1 and re.search(r"bound of 1\.0 KiB: removed the least recently "
                                         r"used \d+ extracted layers \(", lines[0])


def test_a_running_builds_records_are_kept(tmp_path: Path, busybox_ref: str) -> None:
    storage = tmp_path / "s"
    oldest = old_record(storage / "builder" / "snapshots" / ("a" * 64), 3)
    mount = old_record(storage / "builder" / "cache-mounts" / ("m" * 16), 2, "id")
    running = BuildLock(storage / "builder")  # another build, in another process
    running.acquire(exclusive=False)
    try:
        events = build(context(tmp_path, busybox_ref, "echo one > /one"), storage, 1)
        assert not [e for e in events if e["event"] == "gc"]
        assert oldest.exists() and mount.exists()
    finally:
        running.release()
    events = build(context(tmp_path, busybox_ref, "echo two > /two"), storage, 1)  # it ended
    assert [e["cache_mounts"] for e in events if e["event"] == "gc"] == [1]
    assert not oldest.exists() and not mount.exists()


def test_a_build_under_its_bound_does_not_walk_the_cache(
    tmp_path: Path, busybox_ref: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    walks: list[int] = []
    walk = _keep_within

    def counted(*args: object) -> object:
        walks.append(1)
        return walk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr("builder.autogc._keep_within", counted)
    storage = tmp_path / "s"
    ctx = context(tmp_path, busybox_ref, "echo one > /one")
    build(ctx, storage, 2**30)
    assert len(walks) == 1  # measured once
    state = json.loads((storage / "builder" / autogc.STATE).read_text())
    assert state["cache"] == sum(sizes(storage / "builder" / "snapshots").values()) + sum(
        layer.size for _, _, layer in _steps(storage))
    build(context(tmp_path, busybox_ref, "echo two > /two"), storage, 2**30)
    assert len(walks) == 1  # far under the bound: a statvfs, no walk
    # a bound under the last measurement: walked however the file system's use moved
    # since (other processes freeing space there hide the cache's growth from statvfs)
    build(ctx, storage, state["cache"] - 1)
    assert len(walks) == 2
    path = storage / "builder" / autogc.STATE
    path.write_text(json.dumps({**json.loads(path.read_text()), "at": time.time() - 2 * 86400}))
    build(ctx, storage, 2**30)  # a measurement stands for a day at most
    assert len(walks) == 3
    build(ctx, storage, 2**30)
    assert len(walks) == 3
    assert autogc.default_bound(storage) == min(
        os.statvfs(storage).f_blocks * os.statvfs(storage).f_frsize // 10, 10 * 10**9)


def test_cached_steps_go_least_recently_used_first(tmp_path: Path, busybox_ref: str) -> None:
    """A build that finds a step in the cache records its use: over the bound, the steps
    no build used lately go (their blobs unlinked), those the build used stay, and a later
    build of a dropped step runs it again."""
    storage = tmp_path / "s"
    ctx_a = context(tmp_path, busybox_ref, "echo a > /a")
    ctx_b = context(tmp_path, busybox_ref, "echo b > /b")
    build(ctx_a, storage, 0)
    build(ctx_b, storage, 0)
    with sqlite3.connect(storage / "builder" / "cache.db") as db:  # both used days ago
        columns = {row[1] for row in db.execute("PRAGMA table_info(steps)")}
        db.execute("UPDATE steps SET created = created - 3")
        if "used" in columns:
            db.execute("UPDATE steps SET used = used - 3")
    # uses step a (not b) and makes step c; a bound nothing fits in
    events = build(context(tmp_path, busybox_ref, "echo a > /a\nRUN echo c > /c"), storage, 1)
    assert [e["event"] for e in events].count("cached") == 1
    gc = [e for e in events if e["event"] == "gc"]
    assert len(gc) == 1 and gc[0]["cached_steps"] == 1
    assert "1 cached step" in str(gc[0]["message"])
    left = {what for _, what, _ in _steps(storage)}
    assert any("echo a" in w for w in left) and any("echo c" in w for w in left)
    assert not any("echo b" in w for w in left)

    async def linked(holder: str) -> list[object]:
        from cas import StoreConfig, open_store

        async with await open_store(StoreConfig(storage)) as store:
            return list(await store.linked(holder))

    keys = {what: key for key, what, _ in _steps(storage)}
    assert all(asyncio.run(linked(f"cache:{key}")) for key in keys.values())
    events = build(ctx_b, storage, 0)  # dropped: it runs again
    assert "cached" not in [e["event"] for e in events]
    assert any(e["event"] == "start" and "echo b" in str(e["name"]) for e in events)
