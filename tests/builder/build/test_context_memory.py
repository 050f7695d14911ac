"""A large build context costs little memory per file, and the same context keeps its
content keys and its image digest.

A repository with ``node_modules`` holds 100,000s of small files; BuildKit streams its
context. Here the memory a COPY of the context holds per file (its planned items and
hashes) and the peak while planning it are bounded per file, measured with tracemalloc
at two sizes so that what does not grow with the context does not count.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from builder import context as context_mod
from builder.cache import BuildCache
from builder.context import SourceTree
from builder.ignore import IgnoreMatcher, read_ignore_file
from builder.steps.copy import _plan

EPOCH_NS = 1_700_000_000 * 10**9


def _node_modules(root: Path, n: int) -> None:
    """``n`` small files, 20 to a package, some a .dockerignore leaves out."""
    for i in range(n):
        d = root / "node_modules" / f"pkg{i // 20:05d}" / "lib"
        d.mkdir(parents=True, exist_ok=True)
        name = f"debug-{i % 20}.log" if i % 20 == 19 else f"module-{i % 20}.js"
        (d / name).write_text(f"module.exports = {i};\n")
    (root / ".dockerignore").write_text("**/*.log\n")
    (root / "package.json").write_text('{"name": "app"}\n')


def _measure(tmp_path: Path, n: int) -> tuple[int, int, int]:
    """(files planned, bytes the plan holds, peak bytes while planning) of ``COPY . /app``
    of a context of ``n`` files whose hashes are remembered (a rebuild)."""
    ctx = tmp_path / f"ctx{n}"
    _node_modules(ctx, n)
    cache = BuildCache(tmp_path / f"cache{n}.db")
    try:
        tree = SourceTree(ctx, read_ignore_file(ctx, None), hash_store=cache)
        _plan(tree, ["."], "app", True, False, IgnoreMatcher([]))  # remembers the hashes
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            items, hashes = _plan(tree, ["."], "app", True, False, IgnoreMatcher([]))
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(hashes) == len(items) - 1  # each file, and the destination directory
        return len(items), held - base, peak - base
    finally:
        cache.close()


def test_copy_of_a_large_context_holds_little_per_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Each file used to hold an ``os.stat_result`` (~600 bytes), a ``Path`` (~340) and,
    while hashing, a lookup of every remembered hash at once: ~1,400 bytes held and
    ~1,700 at the peak per file. Now ~800 and ~1,000."""
    monkeypatch.setattr(context_mod, "RACY_NS", 0)  # remember the files just written
    small = _measure(tmp_path, 2_000)
    large = _measure(tmp_path, 10_000)
    files = large[0] - small[0]
    assert files > 8_000
    held, peak = (large[1] - small[1]) / files, (large[2] - small[2]) / files
    assert held < 1_100, f"{held:.0f} bytes held per file of the context"
    assert peak < 1_400, f"{peak:.0f} bytes per file at the peak of planning the copy"


def _lookup_peak(tmp_path: Path, n: int) -> tuple[int, int]:
    """(files, bytes) that hashing ``n`` remembered files needs beyond its result."""
    ctx = tmp_path / f"flat{n}"
    ctx.mkdir()
    for i in range(n):
        (ctx / f"f{i:06d}.js").write_text(f"{i}\n")
    cache = BuildCache(tmp_path / f"flat{n}.db")
    try:
        tree = SourceTree(ctx, hash_store=cache)
        files = [(path, st) for _, path, st in tree.walk(tree.resolve(".")[0])]
        tree.hash_files(files)  # remembered
        tracemalloc.start()
        try:
            digests = tree.hash_files(files)
            held, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(digests) == n
        return n, peak - held
    finally:
        cache.close()


def test_remembered_hashes_are_looked_up_in_batches(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Looking up every file's remembered hash at once held a path, a signature and a hash
    per file of the context on top of the result (~400 bytes a file); in batches, what
    lookups hold does not grow with the context."""
    monkeypatch.setattr(context_mod, "RACY_NS", 0)
    # smaller batches than the build's, so that both sizes fill several
    monkeypatch.setattr(context_mod, "_HASH_BATCH", 500, raising=False)
    small = _lookup_peak(tmp_path, 2_000)
    large = _lookup_peak(tmp_path, 12_000)
    extra = (large[1] - small[1]) / (large[0] - small[0])
    assert extra < 100, f"{extra:.0f} bytes per file beyond the hashes"


def _fixed_context(root: Path) -> None:
    """A context with every kind of entry a COPY keys on, its times fixed."""
    (root / "src" / "lib").mkdir(parents=True)
    (root / "build").mkdir()
    (root / "package.json").write_text('{"name": "app"}\n')
    (root / "src" / "main.js").write_text("console.log(1)\n")
    (root / "src" / "lib" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(root / "src" / "lib" / "run.sh", 0o755)
    (root / "src" / "lib" / "big.bin").write_bytes(bytes(range(256)) * 1024)  # hashed in threads
    (root / "src" / "lib" / "big2.bin").write_bytes(bytes(range(255, -1, -1)) * 1024)
    os.link(root / "src" / "main.js", root / "src" / "main-link.js")
    os.symlink("lib/run.sh", root / "src" / "run")
    (root / "build" / "out.o").write_text("ignored")
    (root / "debug.log").write_text("ignored")
    (root / ".dockerignore").write_text("build/\n*.log\n")
    (root / "Dockerfile").write_text("FROM scratch\nCOPY package.json /app/\nCOPY . /app\n")
    for top, dirs, files in os.walk(root, topdown=False):
        for name in [*files, *dirs]:
            os.utime(os.path.join(top, name), ns=(EPOCH_NS, EPOCH_NS), follow_symlinks=False)
    os.utime(root, ns=(EPOCH_NS, EPOCH_NS))


def test_the_same_context_keeps_its_keys_and_digest(
        tmp_path: Path, build: Callable[..., object]) -> None:
    """The content keys of a COPY of the context, and the image built from it, are those
    pybuild computed before walks kept compact records: caches and digests survive."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    _fixed_context(ctx)
    os.chmod(ctx / "Dockerfile", 0o644)
    for p in (ctx / "package.json", ctx / "src" / "main.js", ctx / "src" / "lib" / "big.bin",
              ctx / "src" / "lib" / "big2.bin", ctx / ".dockerignore"):
        os.chmod(p, 0o644)
    for d in (ctx / "src", ctx / "src" / "lib"):
        os.chmod(d, 0o755)
    os.utime(ctx / "Dockerfile", ns=(EPOCH_NS, EPOCH_NS))
    tree = SourceTree(ctx, read_ignore_file(ctx, None))
    _, hashes = _plan(tree, ["."], "app", True, False, IgnoreMatcher([]))
    keys = blake3.blake3(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]
    assert sorted(hashes) == ["/.dockerignore", "/Dockerfile", "/package.json", "/src",
                              "/src/lib", "/src/lib/big.bin", "/src/lib/big2.bin",
                              "/src/lib/run.sh", "/src/main-link.js", "/src/main.js",
                              "/src/run"]
    assert keys == "2e646ae52f3e8d71"
    result = build(ctx, source_date_epoch=0)
    assert str(result.digest) == ("sha256:cc6b98f71e0c5f89439e5e30d66f49068dec52610ade6a198a55c8cb344721c9")  # type: ignore[attr-defined]
