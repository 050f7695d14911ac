"""``flatten_subtree``: one directory or file of a stack of extracted layers (what ``COPY
--from <stage> /dir/`` or ``/go/bin/app`` reads), with overlayfs semantics, or nothing
where a symlink could lead out of it; checked against the whole stack flattened."""

from __future__ import annotations

import os
from pathlib import Path

from builder.sandbox.flatten import flatten_lowers, flatten_subtree
from builder.sandbox.userns import overlay_xattr
from testkit.tools import require_root


def _tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            data: bytes | str | None = os.readlink(p) if p.is_symlink() else (
                p.read_bytes() if p.is_file() else None)
            out[rel] = (st.st_mode, data)
    return out


def test_one_directory_of_the_layers(tmp_path: Path) -> None:
    require_root("whiteouts are character devices: mknod needs root")
    low, mid, top = (tmp_path / n for n in ("low", "mid", "top"))
    (low / "app/dist/old").mkdir(parents=True)
    (low / "app/dist/old/gone.txt").write_text("hidden by the opaque dir\n")
    (low / "app/dist/keep.txt").write_text("low\n")
    (low / "app/dist/deleted.txt").write_text("whited out\n")
    (low / "etc").mkdir()
    (low / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (mid / "app/dist/old").mkdir(parents=True)
    os.setxattr(mid / "app/dist/old", overlay_xattr("opaque"), b"y")
    (mid / "app/dist/old/new.txt").write_text("mid\n")
    os.mknod(mid / "app/dist/deleted.txt", 0o600 | 0o020000, os.makedev(0, 0))
    (top / "app/dist").mkdir(parents=True)
    os.chmod(top / "app/dist", 0o750)
    (top / "app/dist/app.tar.gz").write_bytes(b"\x1f\x8b")
    os.symlink("keep.txt", top / "app/dist/link")
    lowers = [top, mid, low]

    part, whole = tmp_path / "part", tmp_path / "whole"
    assert flatten_subtree(lowers, part, "/app/dist/")
    flatten_lowers(lowers, whole)
    got = _tree(part / "app/dist")
    assert got == _tree(whole / "app/dist")
    assert set(got) == {"old", "old/new.txt", "keep.txt", "app.tar.gz", "link"}
    assert os.lstat(part / "app/dist").st_mode & 0o7777 == 0o750
    assert not (part / "etc").exists()  # the rest of the stage is not copied


def test_a_symlink_on_the_way_flattens_nothing(tmp_path: Path) -> None:
    low, top = tmp_path / "low", tmp_path / "top"
    (low / "srv/dist").mkdir(parents=True)
    top.mkdir()
    os.symlink("srv", top / "app")
    assert not flatten_subtree([top, low], tmp_path / "part", "app/dist")
    assert not (tmp_path / "part").exists()
    os.symlink("srv", low / "tolink")
    assert not flatten_subtree([low], tmp_path / "part", "tolink")  # a link at the end
    assert not flatten_subtree([low], tmp_path / "part", "../etc")
    assert not (tmp_path / "part").exists()


def test_one_file_of_the_layers(tmp_path: Path) -> None:
    require_root("whiteouts are character devices: mknod needs root")
    low, mid, top = (tmp_path / n for n in ("low", "mid", "top"))
    for layer in (low, mid, top):
        (layer / "go/bin").mkdir(parents=True)
    (low / "go/bin/app").write_text("v1\n")
    (low / "go/bin/other").write_text("not copied\n")
    (mid / "go/bin/app").write_text("v2\n")
    os.chmod(mid / "go/bin/app", 0o751)
    os.chown(mid / "go/bin/app", 1000, 1000)
    (low / "etc").mkdir()
    (low / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (top / "go/bin/gone").write_text("whited out above\n")  # the top deletes it, below
    lowers = [top, mid, low]
    part, whole = tmp_path / "part", tmp_path / "whole"
    assert flatten_subtree(lowers, part, "/go/bin/app")
    flatten_lowers(lowers, whole)
    assert _tree(part) == {k: v for k, v in _tree(whole).items() if k in ("go", "go/bin", "go/bin/app")}
    st = os.lstat(part / "go/bin/app")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o751, 1000, 1000)

    # A whiteout of the file in a layer above: nothing there, as in the whole stack.
    os.mknod(top / "go/bin/app", 0o600 | 0o020000, os.makedev(0, 0))
    assert flatten_subtree(lowers, tmp_path / "part2", "go/bin/app")
    assert not (tmp_path / "part2/go/bin/app").exists()
    # A file below, a directory above (and the other way): the top one is what is there.
    os.unlink(top / "go/bin/app")
    (top / "go/bin/app").mkdir()
    (top / "go/bin/app/inner").write_text("dir\n")
    assert flatten_subtree(lowers, tmp_path / "part3", "go/bin/app")
    assert (tmp_path / "part3/go/bin/app/inner").read_text() == "dir\n"
    # Several paths at once: each, and the directories on their ways; one that cannot be
    # taken alone (a link) writes nothing at all.
    assert flatten_subtree(lowers, tmp_path / "part4", ["go/bin/app", "etc/passwd"])
    assert _tree(tmp_path / "part4").keys() == {"go", "go/bin", "go/bin/app", "go/bin/app/inner",
                                                "etc", "etc/passwd"}
    os.symlink("passwd", low / "etc/link")
    assert not flatten_subtree(lowers, tmp_path / "part5", ["go/bin/app", "etc/link"])
    assert not (tmp_path / "part5").exists()
