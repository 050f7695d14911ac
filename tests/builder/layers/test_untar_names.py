"""Entry names of an ADD archive (``apply_layer(..., untar=True)``) read as Docker's untar
reads them, chrooted at the destination: '..' and '/' stop there (checked against Docker
20.10's BuildKit), and nothing outside the destination is ever written."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from builder.layers import apply_layer
from builder.layers.errors import LayerFormatError, UnsafeLayerEntry
from builder.sandbox.rootfs import find_in_lowers


def _tar(*members: tuple[str, str, str], mode: int = 0o644) -> io.BytesIO:
    """A tar of (kind, name, arg) entries: ('file', name, content), ('dir', name, ''),
    ('sym', name, target), ('hard', name, target), each with ``mode``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, arg in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 1000
            if kind == "file":
                info.size = len(arg.encode())
                tf.addfile(info, io.BytesIO(arg.encode()))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "hard": tarfile.LNKTYPE}[kind]
            info.linkname = arg
            tf.addfile(info)
    buf.seek(0)
    return buf


@pytest.fixture
def dst(tmp_path: Path) -> Path:
    """An empty destination ``upper/dst``, beside ``upper/escape`` and ``tmp/host/secret``,
    which no entry may touch."""
    (tmp_path / "upper/dst").mkdir(parents=True)
    (tmp_path / "upper/escape").write_text("outside\n")
    (tmp_path / "host").mkdir()
    (tmp_path / "host/secret").write_text("host secret\n")
    return tmp_path / "upper/dst"


def _outside_untouched(tmp_path: Path) -> None:
    assert sorted(p.name for p in (tmp_path / "upper").iterdir()) == ["dst", "escape"]
    assert (tmp_path / "upper/escape").read_text() == "outside\n"
    assert sorted(p.name for p in (tmp_path / "host").iterdir()) == ["secret"]
    assert (tmp_path / "host/secret").read_text() == "host secret\n"


def _files(dst: Path) -> dict[str, str]:
    return {str(p.relative_to(dst)): p.read_text() for p in sorted(dst.rglob("*"))
            if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("name, lands", [
    ("../escape", "escape"), ("a/../../escape", "escape"), ("/abs/../../name", "name"),
    ("x/../../../../deep", "deep"), ("../../sub/../f", "f"), ("//../twice", "twice"),
])
def test_a_name_climbing_out_lands_inside_the_destination(dst: Path, tmp_path: Path,
                                                          name: str, lands: str) -> None:
    apply_layer(_tar(("file", name, "data\n")), dst, untar=True)
    assert _files(dst) == {lands: "data\n"}
    _outside_untouched(tmp_path)


@pytest.mark.parametrize("name", ["a/..", "x/y/../.."])
def test_a_name_that_cleans_to_dot_is_skipped(dst: Path, name: str) -> None:
    """As Docker's untar: a name that is '.' once cleaned is skipped, whatever its type;
    the destination keeps its mode."""
    os.chmod(dst, 0o755)
    apply_layer(_tar(("file", name, "x\n"), ("dir", "./", ""), ("file", "f", "f\n"),
                     mode=0o700), dst, untar=True)
    assert _files(dst) == {"f": "f\n"}
    assert stat.S_IMODE(os.lstat(dst).st_mode) == 0o755


@pytest.mark.parametrize("name", ["../", "/", "../..", "a/../../"])
def test_a_directory_naming_the_destination_gives_it_its_metadata(dst: Path,
                                                                   name: str) -> None:
    """'../' and '/' are the destination to a process chrooted there: Docker gives it the
    entry's mode (and owner and mtime)."""
    apply_layer(_tar(("dir", name, ""), ("file", "f", "f\n"), mode=0o711), dst, untar=True)
    st = os.lstat(dst)
    assert (stat.S_IMODE(st.st_mode), st.st_mtime) == (0o711, 1000)
    assert _files(dst) == {"f": "f\n"}


@pytest.mark.parametrize("name", ["..", "a/../..", "/.."])
def test_a_file_naming_the_destination_is_refused(dst: Path, tmp_path: Path,
                                                  name: str) -> None:
    with pytest.raises(LayerFormatError, match="names the destination itself"):
        apply_layer(_tar(("file", name, "x\n")), dst, untar=True)
    assert list(dst.iterdir()) == []
    _outside_untouched(tmp_path)


def test_symlinks_on_the_way_stay_inside_the_destination(dst: Path, tmp_path: Path) -> None:
    """The archive's own symlinks, followed after the name is cleaned, resolve inside the
    destination as in a chroot: link -> /etc writes <dst>/etc/passwd, never the host's or
    the image's /etc; up -> ../../.. and host -> <a host directory> stay inside too."""
    host = str(tmp_path / "host")
    apply_layer(_tar(("sym", "link", "/etc"), ("file", "../link/passwd", "hacked\n"),
                     ("sym", "up", "../../.."), ("file", "../up/escape", "in\n"),
                     ("sym", "host", host), ("file", "/host/secret", "written\n"),
                     ("hard", "h", "../../link/passwd")), dst, untar=True)
    assert _files(dst) == {"etc/passwd": "hacked\n", "escape": "in\n",
                           f"{host.lstrip('/')}/secret": "written\n", "h": "hacked\n"}
    assert os.lstat(dst / "h").st_ino == os.lstat(dst / "etc/passwd").st_ino
    _outside_untouched(tmp_path)


def test_the_stages_symlinks_are_followed_inside_the_destination(dst: Path,
                                                                 tmp_path: Path) -> None:
    """As Docker's untar, which writes onto the stage's files: with the stage's
    /dst/link -> /etc, link/passwd is /dst/etc/passwd (the stage's directory, copied up
    with its mode), never the image's /etc/passwd nor the host's; the stage's symlink
    stays a symlink (the layer holds no /dst/link), and /dst/out -> <a host directory>
    leads inside /dst too."""
    stage = tmp_path / "stage"
    (stage / "dst/etc").mkdir(parents=True)
    os.chmod(stage / "dst/etc", 0o750)
    (stage / "dst/etc/passwd").write_text("dst etc\n")
    (stage / "etc").mkdir()
    (stage / "etc/passwd").write_text("image etc\n")
    (stage / "dst/link").symlink_to("/etc")
    host = str(tmp_path / "host")
    (stage / "dst/out").symlink_to(host)

    def lower(rel: str) -> tuple[str, os.stat_result] | None:
        found = find_in_lowers([stage], f"dst/{rel}")
        return None if found is None else (str(found[1]), found[2])

    apply_layer(_tar(("file", "link/passwd", "through\n"), ("file", "../link/new", "new\n"),
                     ("file", "out/secret", "written\n")), dst, untar=True, lower=lower)
    assert _files(dst) == {"etc/passwd": "through\n", "etc/new": "new\n",
                           f"{host.lstrip('/')}/secret": "written\n"}
    assert sorted(p.name for p in dst.iterdir()) == sorted(["etc", host.split("/")[1]])
    assert stat.S_IMODE(os.lstat(dst / "etc").st_mode) == 0o750
    assert (stage / "etc/passwd").read_text() == "image etc\n"
    assert (stage / "dst/etc/passwd").read_text() == "dst etc\n"
    _outside_untouched(tmp_path)


def test_whiteout_names_are_left_out_and_delete_nothing(dst: Path, tmp_path: Path) -> None:
    """Docker's untar writes .wh.* names as ordinary files, which no layer can carry (every
    puller reads them as whiteouts): they are left out, and what the destination already
    holds (another ADD source's file, a directory's contents) is not deleted."""
    (dst / "victim").write_text("victim\n")
    (dst / "sub").mkdir()
    (dst / "sub/old").write_text("old\n")
    apply_layer(_tar(("file", ".wh.victim", "w\n"), ("file", "sub/.wh..wh..opq", "o\n"),
                     ("file", ".wh.d/f", "f\n"), ("dir", "sub/.wh.dir", ""),
                     ("file", "../.wh.new", "n\n"), ("file", "new", "new\n")), dst, untar=True)
    assert _files(dst) == {"victim": "victim\n", "sub/old": "old\n", "new": "new\n"}
    assert sorted(p.name for p in dst.iterdir()) == ["new", "sub", "victim"]
    _outside_untouched(tmp_path)


def test_a_layers_names_may_still_not_climb(dst: Path) -> None:
    """Outside ADD (an image layer), '..' in a name stays refused."""
    with pytest.raises(UnsafeLayerEntry, match="'..' path component"):
        apply_layer(_tar(("file", "../escape", "x\n")), dst)


@pytest.mark.parametrize("name, is_dir, parts", [
    ("../a/./b/", True, ["a", "b"]), ("a/..", False, None), ("", False, None),
    ("/", True, []), ("", True, []), ("a//b/../c", False, ["a", "c"]),
    (".wh.x", False, None), ("a/.wh..wh..opq", False, None), (".wh.d/f", False, None),
])
def test_untar_name(name: str, is_dir: bool, parts: list[str] | None) -> None:
    """'' is how Python's tarfile reads a directory named '/'."""
    from builder.layers.untarname import untar_name

    assert untar_name(name, is_dir=is_dir) == parts


def test_untar_name_refuses_nul() -> None:
    from builder.layers.untarname import untar_name

    with pytest.raises(UnsafeLayerEntry, match="NUL byte"):
        untar_name("a\0b", is_dir=False)
