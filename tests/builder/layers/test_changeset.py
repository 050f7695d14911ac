"""The changeset model and the snapshot differ on its own."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from builder import layers
from builder.layers import (
    Changeset,
    Entry,
    EntryKind,
    Whiteout,
    changeset_of_tree,
    diff_snapshot,
    take_snapshot,
)


def test_package_exports_exist() -> None:
    for name in layers.__all__:
        assert hasattr(layers, name), name
    for module in ("changeset", "chunked", "errors", "extract", "importdir", "overlay",
                   "pathres", "scan", "snapshot", "tarwriter"):
        mod = __import__(f"builder.layers.{module}", fromlist=["__all__"])
        assert all(hasattr(mod, n) for n in mod.__all__)


def test_whiteout_tar_names() -> None:
    assert Whiteout("a/b/c").tar_name == "a/b/.wh.c"
    assert Whiteout("top").tar_name == ".wh.top"
    assert Whiteout("a/b", opaque=True).tar_name == "a/b/.wh..wh..opq"


def d(path: str) -> Entry:
    return Entry(path, EntryKind.DIR, 0o755, 0, 0, 0)


def test_create_sorts_parents_first_and_refuses_duplicates() -> None:
    cs = Changeset.create([d("b"), d("a/z"), d("a"), d("a-b"), d("a/y")])
    assert [e.path for e in cs.entries] == ["a", "a/y", "a/z", "a-b", "b"]
    with pytest.raises(ValueError, match="twice"):
        Changeset.create([d("a"), d("a")])


def test_create_refuses_dangling_hard_links() -> None:
    link = Entry("b", EntryKind.HARDLINK, 0o644, 0, 0, 0, link="a")
    with pytest.raises(ValueError, match="hard link 'b' -> 'a'"):
        Changeset.create([link])
    with pytest.raises(ValueError, match="earlier"):
        Changeset.create([Entry("a", EntryKind.HARDLINK, 0o644, 0, 0, 0, link="b"),
                          Entry("b", EntryKind.FILE, 0o644, 0, 0, 0, source="/x")])


def test_differ_reports_topmost_removals_and_ancestors(tmp_path: Path) -> None:
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "f").write_text("x")
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "keep").write_text("k")
    (tmp_path / "x" / "y" / "drop").write_text("d")
    before = take_snapshot(tmp_path)
    subprocess.run(["rm", "-rf", str(tmp_path / "a" / "b")], check=True)
    os.unlink(tmp_path / "x" / "y" / "drop")
    cs = diff_snapshot(before, tmp_path)
    assert set(cs.whiteouts) == {Whiteout("a/b"), Whiteout("x/y/drop")}
    assert [e.path for e in cs.entries] == ["a", "x", "x/y"]


def test_differ_sees_rewrites_that_keep_size_and_mtime(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"aaaa")
    os.utime(f, ns=(10**18, 10**18))
    before = take_snapshot(tmp_path)
    f.write_bytes(b"bbbb")
    os.utime(f, ns=(10**18, 10**18))
    assert [e.path for e in diff_snapshot(before, tmp_path).entries] == ["f"]  # by ctime
    hashed = take_snapshot(tmp_path, hash_content=True)
    assert diff_snapshot(hashed, tmp_path, hash_content=True).entries == ()
    assert len({r.content for r in hashed.values()}) == 1 and hashed["f"].content


def test_differ_on_an_unchanged_tree_is_empty(sample_tree: Path) -> None:
    before = take_snapshot(sample_tree)
    assert diff_snapshot(before, sample_tree) == Changeset((), ())


def test_sockets_are_left_out(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        (tmp_path / "f").write_text("x")
        assert [e.path for e in changeset_of_tree(tmp_path).entries] == ["f"]
    finally:
        sock.close()


def test_tree_changeset_links_hardlinks_within_the_tree_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "z").write_text("x")
    os.link(root / "z", root / "a")
    (tmp_path / "other").write_text("y")
    os.link(tmp_path / "other", root / "m")  # its partner is outside the tree
    kinds = {e.path: (e.kind, e.link) for e in changeset_of_tree(root).entries}
    assert kinds == {"a": (EntryKind.FILE, ""), "z": (EntryKind.HARDLINK, "a"),
                     "m": (EntryKind.FILE, "")}


def test_a_tree_deeper_than_path_max_is_a_changeset_error_that_says_so(tmp_path: Path) -> None:
    from builder.layers.errors import ChangesetError
    from builder.layers.overlay import changeset_from_upper

    upper = tmp_path / "upper"
    upper.mkdir()
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(900):  # 4,500 bytes of path below upper: made relative, level by level
            os.mkdir("abcd", dir_fd=fd)
            deeper = os.open("abcd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    with pytest.raises(ChangesetError) as caught:
        changeset_from_upper(upper)
    message = str(caught.value)
    assert "too long for this machine" in message and "nest fewer" in message
    assert "/abcd/abcd/" in message and len(message) < 400  # the path cut short
