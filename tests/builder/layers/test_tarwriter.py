"""The deterministic tar writer: byte-identical output, and real tools read it."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from layer_helpers import hardlink_groups, make_sample_tree, need_tool, tree_state

from builder.layers import (
    Changeset,
    ChangesetError,
    Entry,
    EntryKind,
    SourceChanged,
    Whiteout,
    changeset_of_tree,
    write_tar,
)
from builder.layers.tarwriter import BLOCK_SIZE, iter_tar, ustar_header

EPOCH = 1_700_000_000


def tar_bytes(root: Path, epoch: int | None = EPOCH) -> bytes:
    buf = io.BytesIO()
    write_tar(changeset_of_tree(root), buf, source_date_epoch=epoch)
    return buf.getvalue()


def test_same_tree_gives_identical_bytes_regardless_of_creation_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_sample_tree(a)
    # Build b in another order (different inode numbers, directory order, times).
    b.mkdir()
    subprocess.run(["cp", "-a", f"{a}/.", str(b)], check=True)
    for p in b.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (EPOCH + 5000, EPOCH + 5000))  # later than the epoch: clamped
    for p in a.rglob("*"):
        if not p.is_symlink():
            os.utime(p, (EPOCH + 10, EPOCH + 10))
    os.utime(a, (1, 1))
    assert tar_bytes(a) == tar_bytes(b)


def test_clamps_later_mtimes_and_keeps_earlier_ones(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "old").write_text("x")
    (root / "new").write_text("y")
    os.utime(root / "old", (1000, 1000))
    os.utime(root / "new", (EPOCH + 99, EPOCH + 99))
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(root))) as tf:
        mtimes = {m.name: m.mtime for m in tf}
    assert mtimes == {"new": EPOCH, "old": 1000}


def test_header_fields_are_normalised(sample_tree: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(sample_tree))) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    # parents before children, siblings by bytes
    for i, name in enumerate(names):
        parent = name.rpartition("/")[0]
        if parent:
            assert parent in names[:i]
    assert all(m.uname == "" and m.gname == "" for m in members)
    by = {m.name: m for m in members}
    assert by["bin/tool"].mode == 0o4755
    assert by["tmp"].mode == 0o1777 and by["tmp"].isdir()
    assert by["bin/tool-link"].islnk() and by["bin/tool-link"].linkname == "bin/tool"
    assert by["bin/alias"].issym() and by["bin/alias"].linkname == "tool"
    assert by["fifo"].isfifo()
    assert by["etc/hosts"].pax_headers["SCHILY.xattr.user.pybuild.test"].encode(
        "utf-8", "surrogateescape") == b"\x00\xffbinary"
    long_name = "d" * 60 + "/" + "e" * 60 + "/" + "f" * 90
    assert long_name in by and "path" in by[long_name].pax_headers
    assert "ünïcode-名前" in by
    if os.geteuid() == 0:
        assert by["null"].ischr() and (by["null"].devmajor, by["null"].devminor) == (1, 3)
        assert (by["etc/hosts"].uid, by["etc/hosts"].gid) == (1234, 5678)


def test_gnu_tar_extracts_the_same_tree(sample_tree: Path, tmp_path: Path) -> None:
    need_tool("tar")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--same-owner", "-p",
                    "-C", str(out)], input=tar_bytes(sample_tree), check=True)
    assert tree_state(out) == tree_state(sample_tree)
    assert hardlink_groups(out) == {frozenset({"bin/tool", "bin/tool-link"})}


def test_whiteouts_are_empty_files_in_tar_order(tmp_path: Path) -> None:
    cs = Changeset.create(
        [Entry("a", EntryKind.DIR, 0o755, 0, 0, 0), Entry("a/z", EntryKind.DIR, 0o755, 0, 0, 0)],
        [Whiteout("a", opaque=True), Whiteout("a/b"), Whiteout("top")],
    )
    buf = io.BytesIO()
    write_tar(cs, buf, source_date_epoch=EPOCH)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        rows = [(m.name, m.isfile(), m.size, m.mtime, m.uid) for m in tf]
    assert rows == [
        (".wh.top", True, 0, EPOCH, 0),
        ("a", False, 0, 0, 0),
        ("a/.wh..wh..opq", True, 0, EPOCH, 0),
        ("a/.wh.b", True, 0, EPOCH, 0),
        ("a/z", False, 0, 0, 0),
    ]


def test_large_ids_and_sizes_go_to_pax(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    cs = Changeset.create([Entry("f", EntryKind.FILE, 0o644, 3_000_000, 2**31, 5,
                                 size=1, source=str(src))])
    buf = io.BytesIO()
    write_tar(cs, buf)
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        (m,) = tf.getmembers()
    assert (m.uid, m.gid) == (3_000_000, 2**31)
    assert m.pax_headers["uid"] == "3000000"


@pytest.mark.parametrize("size", [(8 << 30) - 1, 8 << 30, (9 << 30) + 5])
def test_a_file_of_8_gib_or_more_has_its_size_in_a_pax_record(tmp_path: Path, size: int) -> None:
    # ustar's 11 octal digits hold at most 8 GiB - 1: a larger size is a pax "size" record
    # (as Go's archive/tar writes it), or a reader takes the file for empty. A sparse file:
    # only the headers, which come before its data, are read.
    src = tmp_path / "big"
    with open(src, "wb") as f:
        f.truncate(size)
    cs = Changeset.create([Entry("big", EntryKind.FILE, 0o644, 0, 0, 5, size=size, source=str(src))])
    head = next(iter_tar(cs))
    with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tf:
        m = tf.next()
        assert m is not None and (m.name, m.size) == ("big", size)
        assert m.pax_headers.get("size") == (None if size < 8 << 30 else str(size))


def test_header_checksum_matches_python_tarfile() -> None:
    hdr = ustar_header(b"name", b"0", mode=0o644, size=3, mtime=7)
    info = tarfile.TarInfo.frombuf(hdr, "utf-8", "strict")
    assert (info.name, info.size, info.mtime, info.mode) == ("name", 3, 7, 0o644)
    assert len(hdr) == BLOCK_SIZE


def test_a_file_that_grows_while_written_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_bytes(b"abc")
    cs = changeset_of_tree(root)
    (root / "f").write_bytes(b"abcdef")
    with pytest.raises(SourceChanged, match="changed while its layer was written"):
        write_tar(cs, io.BytesIO())
    (root / "f").write_bytes(b"a")
    with pytest.raises(SourceChanged):
        write_tar(cs, io.BytesIO())


@pytest.mark.parametrize("name", [".wh.passwd", ".wh..wh..opq"])
def test_a_file_named_as_a_whiteout_is_refused(tmp_path: Path, name: str) -> None:
    """In a layer '.wh.passwd' deletes passwd and '.wh..wh..opq' hides the directory's
    lower contents: written as a file, every puller would lose files, silently."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc" / name).write_text("a plain file\n")
    with pytest.raises(ChangesetError, match=rf"/etc/{name}: a name that starts with "
                                             r"'\.wh\.' cannot be in a layer"):
        write_tar(changeset_of_tree(root), io.BytesIO())
    (root / "etc" / name).rename(root / "etc" / "wh.passwd")  # any other name is fine
    write_tar(changeset_of_tree(root), io.BytesIO())
