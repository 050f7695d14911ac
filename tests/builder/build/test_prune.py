"""``pybuild builder prune``: old cache entries, the extracted layers only they used and
stale context hashes go; a running build's extracted layers never do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder import context as context_mod
from builder.cache import CLAMP, FACTS, BuildCache
from builder.prune import WORK_OWNER, BuildLock, PruneError, _allocated, drop_orphaned_work_dirs, new_work_dir, prune
from cas import Digest, Store

from .conftest import Builder, used_record

ROOT = Path(__file__).resolve().parents[3]


def make_context(tmp_path: Path, base: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("copied\n")
    (ctx / "Dockerfile").write_text(f"FROM {base}\nCOPY . /ctx/\nRUN echo ran > /b.txt\n")
    return ctx


def extracted(storage: Path) -> set[str]:
    return {p.name for p in (storage / "builder" / "snapshots").iterdir()}


def cache_state(storage: Path) -> tuple[int, int]:
    cache = BuildCache(storage / "builder" / "cache.db")
    try:
        return len(cache.layers()), len(cache.file_hashes([str(p) for p in storage.parent.rglob("*")]))
    finally:
        cache.close()


async def holders(storage: Path, digest: str) -> list[str]:
    async with await Store.open(storage) as store:
        return await store.holders(Digest.parse(digest))


def test_prune_keeps_fresh_entries_and_removes_old_ones(
    tmp_path: Path, busybox_ref: str, build: Builder, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(context_mod, "RACY_NS", 0)  # remember the hashes of files just written
    storage = tmp_path / "storage"
    ctx = make_context(tmp_path, busybox_ref)
    first = build(ctx, storage=storage, source_date_epoch=0)
    assert first.ran_steps
    entries, _ = cache_state(storage)
    assert entries >= 2 and len(extracted(storage)) >= 2  # the base layer and the RUN's

    report = asyncio.run(prune(storage, older_than=3600))
    assert (report.entries, report.extracted) == (0, 0)
    assert cache_state(storage)[0] == entries

    # A context file that is gone: its remembered hash goes, the rest stays.
    (ctx / "gone.txt").write_text("x")
    build(ctx, storage=storage, source_date_epoch=0)
    (ctx / "gone.txt").unlink()
    assert asyncio.run(prune(storage, older_than=3600)).file_hashes == 1
    entries = cache_state(storage)[0]  # the second build's steps too

    layers = BuildCache(storage / "builder" / "cache.db").layers()
    report = asyncio.run(prune(storage, older_than=None))
    # the epoch's copies of the layers are counted apart from the steps
    assert report.entries + report.clamped == entries
    assert report.extracted >= 2 and report.extracted_bytes > 0
    assert report.file_hashes >= 1
    assert cache_state(storage)[0] == 0 and extracted(storage) == set()
    for layer in layers:  # the blobs are no longer held by the cache: gc may take them
        assert not [h for h in asyncio.run(holders(storage, layer.digest)) if h.startswith("cache:")]

    again = build(ctx, storage=storage, source_date_epoch=0)
    assert again.ran_steps and again.image.digest == first.image.digest


def test_prune_counts_the_cached_steps_apart_from_the_epochs_copies(
    tmp_path: Path, busybox_ref: str, build: Builder,
) -> None:
    """As ``docker builder prune``'s count, "cache entries" are the cached steps a build
    showed (COPY, RUN); the copies of their layers with times set to a SOURCE_DATE_EPOCH
    are named as such, apart."""
    storage = tmp_path / "storage"
    ctx = make_context(tmp_path, busybox_ref)
    build(ctx, storage=storage, source_date_epoch=0)
    build(ctx, storage=storage, source_date_epoch=100)  # cached steps, new copies
    db = sqlite3.connect(storage / "builder" / "cache.db")
    rows = db.execute("SELECT instruction FROM steps").fetchall()
    db.close()
    copies = sum(1 for (what,) in rows if what == CLAMP)
    assert copies >= 4  # two layers (COPY, RUN), two epochs
    argv = [sys.executable, "-m", "builder", "builder", "prune", "--storage", str(storage), "-a"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    steps = sum(1 for (what,) in rows if what not in (CLAMP, FACTS))
    assert done.stdout.startswith(f"removed {steps} cache entries, ")
    assert (f", {copies} copies of cached layers with their times set to a SOURCE_DATE_EPOCH"
            in done.stdout)


def test_prune_keeps_the_extracted_layers_of_local_images(
    tmp_path: Path, busybox_ref: str, build: Builder,
) -> None:
    storage = tmp_path / "storage"
    build(make_context(tmp_path, busybox_ref), storage=storage, tags=("prune/app:1",))
    before = extracted(storage)
    report = asyncio.run(prune(storage, older_than=None))
    assert report.entries >= 2
    # Every layer of the tagged image (base included) is still extracted.
    assert report.extracted == 0 and extracted(storage) == before


def test_prune_waits_for_running_builds(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    running = BuildLock(storage / "builder")
    running.acquire(exclusive=False)
    try:
        with pytest.raises(PruneError, match="a build is running"):
            asyncio.run(prune(storage, older_than=None, wait=0.2))
    finally:
        running.release()
    assert asyncio.run(prune(storage, older_than=None)).entries == 0


def test_prune_command_prints_json_and_refuses_bad_durations(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "builder", "builder", "prune", "--storage", str(tmp_path / "s")]
    done = subprocess.run([*argv, "--all", "--json"], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"entries": 0, "snapshots": 0, "snapshot_bytes": 0,
                                       "file_hashes": 0, "work_dirs": 0, "work_bytes": 0,
                                       "cache_mounts": 0, "cache_mount_bytes": 0,
                                       "clamped_layers": 0}
    bad = subprocess.run([*argv, "--older-than", "soon"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    assert bad.returncode == 2 and "not a duration such as 90s, 30m, 48h or 7d" in bad.stderr


def test_prune_removes_what_a_killed_build_left(tmp_path: Path, busybox_ref: str) -> None:
    """A build killed with SIGKILL leaves its work directory (``builder/tmp/build-*``,
    a copy of its base's files and more); prune removes it, but never through a mount."""
    storage = tmp_path / "storage"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN head -c 3000000 /dev/urandom > /big && sleep 60\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_NO_FASTPATH="1")
    proc = subprocess.Popen([sys.executable, "-m", "builder", "build", "--progress", "plain",
                             "--storage", str(storage), str(ctx)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the RUN step has started: its work directory exists
            if b"RUN head" in line:
                break
        else:
            pytest.fail("the build ended before its RUN step")
        deadline = time.monotonic() + 60
        while _allocated(storage / "builder" / "tmp") < 3_000_000:  # the step wrote /big
            assert time.monotonic() < deadline and proc.poll() is None, "the RUN step wrote nothing"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    tmp = storage / "builder" / "tmp"
    assert [p.name[:6] for p in tmp.iterdir()] == ["build-"]
    mounted = tmp / "build-mounted" / "m"
    mounted.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mounted)], check=True)
    try:
        (mounted / "kept").write_text("a file system still mounted there\n")
        report = asyncio.run(prune(storage, older_than=3600))
        assert report.work_dirs == 1 and report.work_bytes > 0
        assert [p.name for p in tmp.iterdir()] == ["build-mounted"]
        assert (mounted / "kept").exists()
    finally:
        subprocess.run(["umount", str(mounted)], check=False)
    assert asyncio.run(prune(storage, older_than=3600)).work_dirs == 1
    assert list(tmp.iterdir()) == []


def _build_at_its_run_step(storage: Path, ctx: Path) -> subprocess.Popen[bytes]:
    """A build process whose RUN step (``sleep 60``) has started."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_NO_FASTPATH="1")
    proc = subprocess.Popen([sys.executable, "-m", "builder", "build", "--progress", "plain",
                             "--no-cache", "--storage", str(storage), str(ctx)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"RUN sleep" in line:
            return proc
    proc.wait()
    pytest.fail("the build ended before its RUN step")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]


def test_the_next_build_removes_the_work_dirs_of_killed_builds_only(
        tmp_path: Path, busybox_ref: str) -> None:
    """As BuildKit cleans its leftovers when it starts: a build removes the work
    directories of builds that were killed, never one of a build still running (in
    another process or in its own)."""
    storage = tmp_path / "storage"
    tmp = storage / "builder" / "tmp"
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN sleep 60\n")
    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (quick / "a").write_text("a\n")
    killed = _build_at_its_run_step(storage, slow)
    _kill(killed)
    [left] = list(tmp.iterdir())
    running = _build_at_its_run_step(storage, slow)  # the next build
    try:
        [its] = list(tmp.iterdir())
        assert its != left and (its / WORK_OWNER).exists()
        mine, fd = new_work_dir(tmp)  # a build of this process, running
        try:
            assert drop_orphaned_work_dirs(tmp) == 0
            assert sorted(tmp.iterdir()) == sorted([its, mine])
        finally:
            _kill(running)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_NO_FASTPATH="1")
        done = subprocess.run([sys.executable, "-m", "builder", "build", "-q", "--storage",
                               str(storage), str(quick)], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert list(tmp.iterdir()) == [mine]  # the killed one went, this one stays
    finally:
        if running.poll() is None:
            _kill(running)
    os.close(fd)
    assert drop_orphaned_work_dirs(tmp) == 1 and list(tmp.iterdir()) == []


def test_prune_takes_dockers_short_flags(tmp_path: Path) -> None:
    """``docker builder prune -af``: -a is --all, -f (no confirmation) is what prune does."""
    storage = tmp_path / "s"
    leftover = storage / "builder" / "tmp" / "build-x"
    leftover.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-m", "builder", "builder", "prune", "-af", "--json",
                           "--storage", str(storage)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["work_dirs"] == 1


def test_prune_all_frees_the_layers_of_steps_run_again(
    tmp_path: Path, busybox_ref: str, build: Builder,
) -> None:
    """``--no-cache`` runs a step again and links its new layer to the same key: after
    ``prune --all``, ``storage gc`` must take the layers of every run, as
    ``docker builder prune -a`` does: three builds leave what one leaves."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN head -c 100000 /dev/urandom > /r\n")

    async def left_after_prune(storage: Path) -> int:
        await prune(storage, older_than=None)
        async with await Store.open(storage) as store:
            await store.gc(grace=0)
            return (await store.stats()).blobs

    build(ctx, storage=tmp_path / "once", no_cache=True)
    for _ in range(3):
        build(ctx, storage=tmp_path / "thrice", no_cache=True)
    assert asyncio.run(left_after_prune(tmp_path / "thrice")) == \
        asyncio.run(left_after_prune(tmp_path / "once"))


def test_prune_removes_cache_mounts_as_buildkit_does(
    tmp_path: Path, busybox_ref: str, build: Builder,
) -> None:
    """BuildKit's ``docker builder prune`` removes ``RUN --mount=type=cache`` directories
    (``exec.cachemount`` records) with or without ``-a``, those used within ``until=``
    excepted, and ``--filter type=exec.cachemount`` them alone; one a running step holds
    stays."""
    from builder.sandbox.caches import cache_root, lease_caches
    from builder.sandbox.spec import CacheMount

    storage = tmp_path / "storage"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nRUN --mount=type=cache,id=pc,target=/c head -c 200000 /dev/urandom > /c/f\n")
    build(ctx, storage=storage)
    mounts = storage / "builder" / "cache-mounts"
    root = cache_root(mounts, "pc")
    assert (root / "0" / "f").stat().st_size == 200000

    assert asyncio.run(prune(storage, older_than=3600)).cache_mounts == 0  # used just now
    two_hours_ago = time.time() - 7200
    os.utime(root / "id", (two_hours_ago, two_hours_ago))
    report = asyncio.run(prune(storage, older_than=3600))  # not --all: it goes all the same
    assert (report.cache_mounts, list(mounts.iterdir())) == (1, [])
    assert report.cache_mount_bytes >= 200000

    build(ctx, storage=storage, no_cache=True)
    entries, _ = cache_state(storage)
    mount = CacheMount(target="/c", id="pc")
    with lease_caches(mounts, [mount]):  # a step of a running build has it mounted
        assert asyncio.run(prune(storage, older_than=None)).cache_mounts == 0
        assert (root / "0" / "f").exists()
    argv = [sys.executable, "-m", "builder", "builder", "prune", "--storage", str(storage),
            "--json", "--filter", "type=exec.cachemount"]
    kept = subprocess.run([*argv, "--filter", "until=1h"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["cache_mounts"] == 0
    done = subprocess.run([*argv, "-a"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cache_mounts"] == 1 and list(mounts.iterdir()) == []
    assert cache_state(storage)[0] == entries  # the steps' entries stay
    bad = subprocess.run([*argv[:-2], "--filter", "dangling=true"], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "'dangling=true': pybuild builder prune takes until=DURATION" in bad.stderr


def test_keep_storage_keeps_the_most_recently_used(tmp_path: Path) -> None:
    """``--keep-storage SIZE``, as docker builder prune: the least recently used extracted
    layers and cache mounts go until what is left takes at most SIZE, whatever their age
    (no age limit unless one is given), and a size that is none is refused."""
    storage = tmp_path / "s"
    now = time.time()

    entry = used_record
    layers = storage / "builder" / "snapshots"
    oldest = entry(layers / ("a" * 64), now - 3 * 86400)  # older than the default 48h
    mount = entry(storage / "builder" / "cache-mounts" / ("m" * 16), now - 200, "id")
    newer = entry(layers / ("b" * 64), now - 100)
    newest = entry(layers / ("c" * 64), now)
    each, oldest_size, mount_size = _allocated(newest), _allocated(oldest), _allocated(mount)
    argv = [sys.executable, "-m", "builder", "builder", "prune", "--storage", str(storage),
            "--json", "--keep-storage"]

    def pruned(*args: str) -> dict[str, int]:
        done = subprocess.run([*argv, *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    assert pruned("10m")["snapshots"] == 0 and oldest.exists()  # within the size: none by age
    report = pruned(str(2 * each + 1024))
    assert (report["snapshots"], report["cache_mounts"]) == (1, 1)
    assert (report["snapshot_bytes"], report["cache_mount_bytes"]) == (oldest_size, mount_size)
    assert not oldest.exists() and not mount.exists()
    assert newer.exists() and newest.exists()
    assert pruned("0", "--all")["snapshots"] == 2 and list(layers.iterdir()) == []
    bad = subprocess.run([*argv, "lots"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "'lots' is not a size such as 512m, 10g or 1073741824" in bad.stderr
