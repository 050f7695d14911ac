"""Hard links across steps (testfiles/hardlinks): a file hard-linked in one step and changed
through one of its names later shows the change under every name, as with docker build;
each layer lists the group as one regular file plus hard-link entries; overlayfs and the
snapshot differ give the same image."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest


def _layers(oci: Path, digest: str) -> list[list[tarfile.TarInfo]]:
    blobs = oci / "blobs/sha256"
    manifest = json.loads((blobs / digest.split(":", 1)[1]).read_bytes())
    out = []
    for layer in manifest["layers"]:
        data = (blobs / layer["digest"].split(":", 1)[1]).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            out.append(tar.getmembers())
    return out


def _group(out: Path, *names: str) -> set[tuple[int, int]]:
    return {(os.lstat(out / n).st_dev, os.lstat(out / n).st_ino) for n in names}


@pytest.mark.parametrize("differ", ["overlay", "snapshot"])
def test_changes_through_one_name_show_under_every_name(
        context_of, build, tmp_path: Path, differ: str) -> None:  # type: ignore[no-untyped-def]
    out, oci = tmp_path / "out", tmp_path / "oci"
    result = build(context_of("hardlinks"), local=out, oci=oci, differ=differ,
                   source_date_epoch=1700000000)
    data = out / "data"
    assert (data / "sub/f2").read_text() == "a\nb\n"
    assert len(_group(data, "f1", "sub/f2")) == 1
    assert (os.lstat(data / "f1").st_uid, os.lstat(data / "f1").st_gid) == (1, 2)
    assert len(_group(data, "g1", "g-renamed")) == 1 and not (data / "g2").exists()
    assert (data / "g1").read_text() == "one\ntwo\nthree\n"
    assert os.lstat(data / "g1").st_mode & 0o777 == 0o600
    assert (data / "copied.txt").read_text() == "copied\nvia-link\n"
    assert len(_group(data, "copied.txt", "copied-link")) == 1

    layers = _layers(oci, str(result.image.digest))
    appended = {m.name: m for m in layers[3]}  # RUN echo b >> /data/f1
    assert appended["data/f1"].isfile() and appended["data/f1"].size == 4
    assert appended["data/sub/f2"].type == tarfile.LNKTYPE
    assert appended["data/sub/f2"].linkname == "data/f1"
    assert "data/g1" not in appended and "data/copied.txt" not in appended
    removed = {m.name for m in layers[5]}  # RUN rm /data/g2: only the whiteout
    assert removed == {"data", "data/.wh.g2"}
    spanning = {m.name: m for m in layers[7]}  # RUN echo via-link >> /data/copied-link
    assert spanning["data/copied-link"].isfile()
    assert spanning["data/copied.txt"].type == tarfile.LNKTYPE
    assert spanning["data/copied.txt"].linkname == "data/copied-link"
    renamed = {m.name: m for m in layers[8]}  # RUN mv /data/g3 /data/g-renamed && ...
    assert renamed["data/g-renamed"].isfile() and "data/.wh.g3" in renamed
    assert renamed["data/g1"].type == tarfile.LNKTYPE
    assert renamed["data/g1"].linkname == "data/g-renamed"


def test_overlay_and_snapshot_differs_give_the_same_image(
        context_of, build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = context_of("hardlinks")
    digests = {
        differ: build(ctx, storage=tmp_path / f"storage-{differ}", differ=differ,
                      source_date_epoch=1700000000).image.digest
        for differ in ("overlay", "snapshot")
    }
    assert digests["overlay"] == digests["snapshot"]


@pytest.mark.parametrize("differ", ["overlay", "snapshot"])
def test_a_base_images_link_group_changed_by_a_step(
        build, tmp_path: Path, differ: str) -> None:  # type: ignore[no-untyped-def]
    """Links in a pulled base layer: extracted as one inode, changed through one name."""
    from testkit.rootfs import make_busybox_rootfs
    from tests.builder.build.conftest import write_base_layout

    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    (rootfs / "opt/lib").mkdir(parents=True)
    (rootfs / "opt/lib/libx.so.1").write_text("v1\n")
    os.link(rootfs / "opt/lib/libx.so.1", rootfs / "opt/libx-copy")
    base = write_base_layout(rootfs, tmp_path / "layout")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN echo v2 >> /opt/libx-copy\n")
    out, oci = tmp_path / "out", tmp_path / "oci"
    result = build(ctx, local=out, oci=oci, differ=differ)
    assert (out / "opt/lib/libx.so.1").read_text() == "v1\nv2\n"
    assert len(_group(out, "opt/lib/libx.so.1", "opt/libx-copy")) == 1
    base_layer, run_layer = _layers(oci, str(result.image.digest))
    assert {m.name: m.type for m in base_layer}["opt/libx-copy"] == tarfile.LNKTYPE
    entries = {m.name: m for m in run_layer}
    assert entries["opt/lib/libx.so.1"].isfile()
    assert entries["opt/libx-copy"].type == tarfile.LNKTYPE
    assert entries["opt/libx-copy"].linkname == "opt/lib/libx.so.1"
