"""Unpacking an ADD archive (``apply_layer(..., untar=True)``) over a stage's files: a hard
link may join a file the stage already has at the destination, as Docker's untar (BuildKit
and the classic builder) links to it, and its target names stay inside the destination."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from builder.layers import apply_layer
from builder.layers.errors import LinkToDirectory, MissingLinkTarget, UnsafeLayerEntry
from builder.layers.linkup import LowerLookup
from builder.sandbox.rootfs import find_in_lowers
from testkit.tools import require_root


def _tar(*members: tuple[str, str, object], mode: int = 0o644, uid: int = 0,
         mtime: int = 1000) -> io.BytesIO:
    """A tar of ('file', name, bytes), ('hard', name, target), ('dir', name, None) entries,
    each with ``mode``, ``uid`` (and gid) and ``mtime``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, arg in members:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, mtime
            if kind == "file":
                assert isinstance(arg, bytes)
                info.size = len(arg)
                tf.addfile(info, io.BytesIO(arg))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            else:
                info.type, info.linkname = tarfile.LNKTYPE, str(arg)
            tf.addfile(info)
    buf.seek(0)
    return buf


@pytest.fixture
def stage(tmp_path: Path) -> Path:
    """A stage's root (one extracted layer): /dst/a (0600, 1000:50, "old a"), /dst/x and
    /x (different contents), /dst/sub/c in /dst/sub (0750, 7:8), /dst/s -> a, symlinked
    directories /dst/lnk -> sub and /dst/abs -> /sub (inside the destination: /dst/sub),
    and /outside/secret, which no link may reach."""
    require_root("the stage's files have owners")
    root = tmp_path / "stage"
    (root / "dst/sub").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "outside/secret").write_text("keep me\n")
    (root / "dst/a").write_text("old a\n")
    os.chown(root / "dst/a", 1000, 50)
    os.chmod(root / "dst/a", 0o600)
    (root / "dst/x").write_text("dst x\n")
    (root / "x").write_text("root x\n")
    (root / "dst/sub/c").write_text("c\n")
    os.chown(root / "dst/sub", 7, 8)
    os.chmod(root / "dst/sub", 0o750)
    os.utime(root / "dst/sub", (1234567890, 1234567890))
    (root / "dst/s").symlink_to("a")
    (root / "dst/lnk").symlink_to("sub")
    (root / "dst/abs").symlink_to("/sub")
    (root / "dst/out").symlink_to(str(tmp_path / "host"))
    (tmp_path / "host").mkdir()
    (tmp_path / "host/secret").write_text("host secret\n")
    return root


def _below(stage: Path, dest: str) -> LowerLookup:
    """What the stage shows at a path of an archive unpacked at ``dest``."""
    def lower(rel: str) -> tuple[str, os.stat_result] | None:
        found = find_in_lowers([stage], f"{dest}/{rel}")
        return None if found is None else (str(found[1]), found[2])
    return lower


def _unpack(stage: Path, tmp_path: Path, src: io.BytesIO) -> Path:
    """``src`` unpacked into a fresh upper directory's /dst, over ``stage``."""
    upper = tmp_path / "upper"
    (upper / "dst").mkdir(parents=True)
    apply_layer(src, upper / "dst", untar=True, lower=_below(stage, "dst"))
    return upper / "dst"


def test_a_link_joins_the_stages_file_with_the_entrys_metadata(stage: Path,
                                                              tmp_path: Path) -> None:
    """As Docker: /dst/a is copied up and /dst/b joins it; the link entry's owner, mode and
    mtime become the file's (Docker's untar sets them on the link); the stage's own copy
    is left as it was."""
    dst = _unpack(stage, tmp_path, _tar(("hard", "b", "a"), ("hard", "e", "b")))
    a, b, e = (os.lstat(dst / n) for n in ("a", "b", "e"))
    assert a.st_ino == b.st_ino == e.st_ino and a.st_nlink == 3
    assert (dst / "b").read_text() == "old a\n"
    assert (stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid, a.st_mtime) == (0o644, 0, 0, 1000)
    kept = os.lstat(stage / "dst/a")
    assert (stat.S_IMODE(kept.st_mode), kept.st_uid, kept.st_nlink) == (0o600, 1000, 1)
    assert sorted(p.name for p in dst.iterdir()) == ["a", "b", "e"]


@pytest.mark.parametrize("target", ["../x", "/x", "../../../x", "sub/../x", "./x"])
def test_a_target_climbing_out_stops_at_the_destination(stage: Path, tmp_path: Path,
                                                         target: str) -> None:
    """Docker's untar runs chrooted at the destination: '..' and '/' stop there, so each
    of these names /dst/x, never the image's /x."""
    dst = _unpack(stage, tmp_path, _tar(("hard", "b", target)))
    assert (dst / "b").read_text() == "dst x\n"
    assert os.lstat(dst / "b").st_ino == os.lstat(dst / "x").st_ino


def test_a_target_only_outside_the_destination_is_missing(stage: Path, tmp_path: Path) -> None:
    (stage / "dst/x").unlink()  # /x is still in the image, outside /dst
    with pytest.raises(MissingLinkTarget, match="'b': hard link target '../x' does not exist"):
        _unpack(stage, tmp_path, _tar(("hard", "b", "../x")))
    assert not (tmp_path / "upper/x").exists() and not (tmp_path / "upper/dst/x").exists()


@pytest.mark.parametrize("target", ["lnk/c", "abs/c"])
def test_symlinks_of_the_stage_are_followed_inside_the_destination(
        stage: Path, tmp_path: Path, target: str) -> None:
    """lnk -> sub, and abs -> /sub read from the destination as root: /dst/sub/c. The
    directory copied up on the way keeps the stage's mode, owner and mtime."""
    dst = _unpack(stage, tmp_path, _tar(("hard", "n/b", target)))
    assert os.lstat(dst / "n/b").st_ino == os.lstat(dst / "sub/c").st_ino
    assert (dst / "n/b").read_text() == "c\n"
    sub = os.lstat(dst / "sub")
    assert (stat.S_IMODE(sub.st_mode), sub.st_uid, sub.st_gid, sub.st_mtime) == (
        0o750, 7, 8, 1234567890)
    assert not (dst / "lnk").exists() and not (dst / "abs").exists()


@pytest.mark.parametrize("target", ["out/secret", "../../outside/secret", "../host/secret",
                                    "/outside/secret"])
def test_hostile_targets_reach_nothing_outside_the_destination(
        stage: Path, tmp_path: Path, target: str) -> None:
    """A symlink of the stage to a host directory, '..' past the destination, the image's
    own /outside: none is found, nothing is linked or written outside."""
    with pytest.raises(MissingLinkTarget):
        _unpack(stage, tmp_path, _tar(("hard", "b", target)))
    assert (tmp_path / "host/secret").read_text() == "host secret\n"
    assert os.lstat(tmp_path / "host/secret").st_nlink == 1
    assert os.lstat(stage / "outside/secret").st_nlink == 1
    assert sorted(p.name for p in (tmp_path / "upper").iterdir()) == ["dst"]
    assert list((tmp_path / "upper/dst").iterdir()) == []


def test_a_link_to_the_stages_symlink_links_the_symlink(stage: Path, tmp_path: Path) -> None:
    dst = _unpack(stage, tmp_path, _tar(("hard", "b", "s")))
    assert os.readlink(dst / "b") == "a"
    assert os.lstat(dst / "b").st_ino == os.lstat(dst / "s").st_ino
    assert not (dst / "a").exists()


@pytest.mark.parametrize("members", [[("hard", "b", "sub")],
                                     [("dir", "new", None), ("hard", "b", "new")]])
def test_a_link_to_a_directory_is_refused(stage: Path, tmp_path: Path,
                                          members: list[tuple[str, str, object]]) -> None:
    with pytest.raises(LinkToDirectory, match="'b': hard link to a directory"):
        _unpack(stage, tmp_path, _tar(*members))


def test_a_link_to_nothing_is_refused(stage: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingLinkTarget, match="'b': hard link target 'nope' does not exist "
                       r"\(it is neither in the layer \(before the link\) nor in the layers "
                       "below it"):
        _unpack(stage, tmp_path, _tar(("hard", "b", "nope")))


def test_a_later_entry_replaces_the_copy_not_the_link(stage: Path, tmp_path: Path) -> None:
    """b joins the stage's a; the archive's own a, later, is a new file: b keeps the old."""
    dst = _unpack(stage, tmp_path, _tar(("hard", "b", "a"), ("file", "a", b"new a\n")))
    assert (dst / "b").read_text() == "old a\n" and (dst / "a").read_text() == "new a\n"
    assert os.lstat(dst / "a").st_ino != os.lstat(dst / "b").st_ino


def test_an_archives_own_link_sets_its_metadata_only_when_unpacked(tmp_path: Path) -> None:
    """Docker's untar gives the linked file the link entry's metadata (c becomes 0750);
    a layer keeps the file's own (its link entries carry the same anyway)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        file = tarfile.TarInfo("c")
        file.size, file.mode, file.mtime = 2, 0o644, 1000
        tf.addfile(file, io.BytesIO(b"c\n"))
        link = tarfile.TarInfo("d")
        link.type, link.linkname, link.mode, link.mtime = tarfile.LNKTYPE, "c", 0o750, 2000
        tf.addfile(link)
    for untar, mode, mtime in ((True, 0o750, 2000), (False, 0o644, 1000)):
        root = tmp_path / f"root-{untar}"
        root.mkdir()
        apply_layer(io.BytesIO(buf.getvalue()), root, untar=untar)
        st = os.lstat(root / "d")
        assert st.st_ino == os.lstat(root / "c").st_ino
        assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (mode, mtime)


def test_a_layers_link_target_may_still_not_climb(tmp_path: Path) -> None:
    """Outside ADD (an image layer), '..' in a link target stays refused."""
    (tmp_path / "root").mkdir()
    with pytest.raises(UnsafeLayerEntry, match="'..' path component"):
        apply_layer(_tar(("file", "x", b"x"), ("hard", "b", "../x")), tmp_path / "root")
