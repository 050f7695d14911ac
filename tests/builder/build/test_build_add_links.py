"""ADD of an archive whose hard links name files the stage already has at the destination
(the build-compare case add-archive-links, which the e2e tests also build with Docker): the
link joins that file, as Docker's untar links to it,
and the layer holds the file (copied up) and the link; a link to nothing or to a
directory fails naming the entry and the fix, as BuildKit fails."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from builder.steps.common import BuildError
from tests.builder.build.conftest import Builder

CASE = Path(__file__).resolve().parents[2] / "e2e" / "testfiles" / "build-compare" / "add-archive-links"


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    """A copy of the case's context (its Dockerfiles take the base as ``--build-arg BASE``)."""
    return Path(shutil.copytree(CASE, tmp_path / "ctx"))


@pytest.fixture
def base(busybox_ref: str) -> dict[str, str]:
    return {"BASE": busybox_ref}


def _top_layer(oci: Path, digest: str) -> dict[str, tarfile.TarInfo]:
    blobs = oci / "blobs/sha256"
    manifest = json.loads((blobs / digest.split(":", 1)[1]).read_bytes())
    data = (blobs / manifest["layers"][-1]["digest"].split(":", 1)[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: m for m in tar.getmembers()}


def _shown(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink


def test_links_join_the_stages_files_at_the_destination(
        ctx: Path, base: dict[str, str], build: Builder, tmp_path: Path) -> None:
    out, oci = tmp_path / "out", tmp_path / "oci"
    result = build(ctx, build_args=base, local=out, oci=oci)
    dst = out / "dst"

    def same(*names: str) -> bool:
        return len({os.lstat(dst / n).st_ino for n in names}) == 1

    # b and e join the stage's a, which takes b's entry's mode and owner (as in Docker)
    assert same("a", "b", "e") and (dst / "e").read_text() == "old a\n"
    assert _shown(dst / "a") == (0o644, 0, 0, 3)
    # '../x' is the destination's x, not the image's /x
    assert same("x", "xl") and (dst / "xl").read_text() == "dst x\n"
    assert (out / "x").read_text() == "root x\n" and os.lstat(out / "x").st_nlink == 1
    # through the stage's symlink lnk -> sub; sub keeps its mode and owner
    assert same("n/c2", "sub/c") and (dst / "n/c2").read_text() == "sub c\n"
    assert _shown(dst / "sub") == (0o750, 7, 8, 2)
    # a link to the stage's symlink is that symlink
    assert os.readlink(dst / "sl") == "a"
    # the archive's own link sets the mode and owner its entry has
    assert same("c", "d") and _shown(dst / "d") == (0o750, 1000, 50, 2)
    # a later entry replaces the name, not the file the link joined
    assert (dst / "keep").read_text() == "stage old\n"
    assert (dst / "old").read_text() == "the archive's old\n"

    # the ADD's layer holds each joined file, copied up, and the links to it
    layer = _top_layer(oci, str(result.image.digest))
    assert layer["dst/a"].isfile() and layer["dst/a"].mode == 0o644
    assert layer["dst/a"].uid == 0 and layer["dst/a"].size == len("old a\n")
    links = {name: m.linkname for name, m in layer.items() if m.islnk()}
    assert links == {"dst/b": "dst/a", "dst/e": "dst/a", "dst/xl": "dst/x",
                     "dst/sub/c": "dst/n/c2", "dst/d": "dst/c"}
    assert layer["dst/sub"].isdir() and (layer["dst/sub"].mode, layer["dst/sub"].uid) == (0o750, 7)
    assert layer["dst/sl"].issym() and layer["dst/sl"].linkname == "a"
    assert "x" not in layer and "dst/lnk" not in layer


@pytest.mark.parametrize("case, message", [
    ("missing", "missing.tar: entry 'b' is a hard link to 'nope', which is neither in the "
                "archive before it nor in the image at /dst/nope (a link target is looked up "
                "inside the destination, as BuildKit does, which fails too: 'no such file or "
                "directory'); put that file in the archive before the link, or create "
                "/dst/nope in an earlier step"),
    ("dir", "dir.tar: entry 'b' is a hard link to 'sub', which is a directory (/dst/sub), and "
            "no file system hard-links a directory (BuildKit fails too: 'operation not "
            "permitted'); make the entry a symlink, or link it to a file"),
])
def test_a_link_to_nothing_or_a_directory_fails_naming_the_entry(
        ctx: Path, base: dict[str, str], build: Builder, tmp_path: Path, case: str,
        message: str) -> None:
    with pytest.raises(BuildError) as info:
        build(ctx, build_args=base, dockerfile=ctx / f"{case}.Dockerfile", local=tmp_path / "out")
    assert f"{case}.Dockerfile:4: ADD" in str(info.value)
    assert message in str(info.value)


def test_with_link_the_stages_files_are_not_there(
        ctx: Path, base: dict[str, str], build: Builder, tmp_path: Path) -> None:
    """ADD --link unpacks onto an empty layer (as BuildKit): the stage's a is not there."""
    text = (ctx / "Dockerfile").read_text().replace("ADD links.tar", "ADD --link links.tar")
    (ctx / "Dockerfile").write_text(text)
    with pytest.raises(BuildError, match="entry 'b' is a hard link to 'a', which is not in "
                       "the archive before it, and ADD --link unpacks onto an empty layer"):
        build(ctx, build_args=base, local=tmp_path / "out")
