"""Context file hashes are remembered by lstat: an unchanged file is not read again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder import context as context_mod
from builder.cache import BuildCache
from builder.context import SourceTree, hash_path


def _files(root: Path) -> list[tuple[Path, os.stat_result]]:
    return [(p, os.lstat(p)) for p in sorted(root.iterdir())]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[SourceTree, BuildCache]:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for i in range(5):
        (ctx / f"f{i}").write_bytes(os.urandom(100_000 if i % 2 else 10))
    os.symlink("f0", ctx / "link")
    cache = BuildCache(tmp_path / "cache.db")
    return SourceTree(ctx, hash_store=cache), cache


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = context_mod.hash_path

    def counted(path: Path, st: os.stat_result) -> str:
        calls.append(path)
        return real(path, st)

    monkeypatch.setattr(context_mod, "hash_path", counted)
    return calls


def test_unchanged_files_reuse_their_hash(tree: tuple[SourceTree, BuildCache],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree
    monkeypatch.setattr(context_mod, "RACY_NS", 0)
    calls = _counting(monkeypatch)
    files = _files(src.root)
    first = src.hash_files(files)
    assert first == [hash_path(p, st) for p, st in files]
    assert len(calls) == len(files)
    calls.clear()
    assert src.hash_files(_files(src.root)) == first
    assert calls == [src.root / "link"]  # only what is not a regular file is re-read

    changed = src.root / "f1"
    changed.write_bytes(os.urandom(100_000))  # same size, new bytes, new mtime/ctime
    calls.clear()
    files = _files(src.root)
    again = src.hash_files(files)
    assert sorted(calls) == sorted([src.root / "link", changed])
    assert again[1] != first[1] and again[1] == hash_path(changed, os.lstat(changed))
    assert again[:1] + again[2:] == first[:1] + first[2:]
    cache.close()


def test_a_mode_change_is_seen(tree: tuple[SourceTree, BuildCache],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree
    monkeypatch.setattr(context_mod, "RACY_NS", 0)
    first = src.hash_files(_files(src.root))
    os.chmod(src.root / "f2", 0o755)
    assert src.hash_files(_files(src.root))[2] != first[2]
    cache.close()


def test_recently_changed_files_are_not_remembered(tree: tuple[SourceTree, BuildCache],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tree  # every file was written just now: racily clean
    calls = _counting(monkeypatch)
    files = _files(src.root)
    src.hash_files(files)
    calls.clear()
    src.hash_files(files)
    assert len(calls) == len(files)
    assert cache.file_hashes([str(p) for p, _ in files]) == {}
    cache.close()


def test_a_name_that_is_no_utf8_is_remembered_like_any(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux names are bytes: a context made on a Latin-1 system holds ``caf\\xe9``. Its hash
    was written to SQLite as a string with surrogates, which SQLite refuses: the build
    failed with an internal error."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    name = os.fsdecode(b"caf\xe9.txt")
    (ctx / name).write_bytes(os.urandom(1000))
    (ctx / "plain").write_bytes(os.urandom(1000))
    cache = BuildCache(tmp_path / "cache.db")
    src = SourceTree(ctx, hash_store=cache)
    monkeypatch.setattr(context_mod, "RACY_NS", 0)
    calls = _counting(monkeypatch)
    first = src.hash_files(_files(ctx))
    calls.clear()
    assert src.hash_files(_files(ctx)) == first and calls == []
    assert set(cache.file_hashes([str(ctx / name)])) == {str(ctx / name)}
    os.unlink(ctx / name)
    assert cache.prune_file_hashes(everything=False) == 1
    cache.close()


def test_copy_of_a_name_that_is_no_utf8(busybox_ref: str, build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = tmp_path / "ctx"
    (ctx / "data").mkdir(parents=True)
    (ctx / os.fsdecode(b"data/caf\xe9.txt")).write_bytes(b"latin-1 name")
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nCOPY data/ /data/\nRUN find /data -type f > /list\n")
    for out in ("out1", "out2"):  # the second build is cached
        build(ctx, local=tmp_path / out)
        assert (tmp_path / out / os.fsdecode(b"data/caf\xe9.txt")).read_bytes() == b"latin-1 name"
        assert (tmp_path / out / "list").read_bytes() == b"/data/caf\xe9.txt\n"
