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

from testkit.docker_engine import DockerEngine
from tests.builder.build.conftest import Builder


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


def _add_layer(layout: Path, members: list[tarfile.TarInfo]) -> None:
    """Put a layer of ``members`` (no data) on top of the one image in ``layout``."""
    import gzip
    import hashlib

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for member in members:
            tf.addfile(member)
    raw = buf.getvalue()
    blob = gzip.compress(raw, mtime=0)
    blobs = layout / "blobs/sha256"

    def put(data: bytes) -> str:
        encoded = hashlib.sha256(data).hexdigest()
        (blobs / encoded).write_bytes(data)
        return f"sha256:{encoded}"

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(raw).hexdigest())
    config["history"].append({"created_by": "a layer of links"})
    data = json.dumps(config).encode()
    manifest["config"].update(digest=put(data), size=len(data))
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                               "digest": put(blob), "size": len(blob)})
    data = json.dumps(manifest).encode()
    index["manifests"][0].update(digest=put(data), size=len(data))
    (layout / "index.json").write_text(json.dumps(index))


def _entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o755
    return info


def _base_with_link(tmp_path: Path, target: str, content: str = "from the lower layer\n",
                    name: str = "base") -> str:
    """A two-layer base: busybox with /data/lower.txt (``content``), then a layer of only
    /opt and the hard link /opt/linked.txt to ``target`` (a file of the layer below, or
    not): the same layer, byte for byte, whatever ``content`` is."""
    from testkit.rootfs import make_busybox_rootfs
    from tests.builder.build.conftest import write_base_layout

    rootfs = make_busybox_rootfs(tmp_path / f"{name}-rootfs")
    (rootfs / "data").mkdir(mode=0o750)
    (rootfs / "data/lower.txt").write_text(content)
    os.chmod(rootfs / "data/lower.txt", 0o640)
    base = write_base_layout(rootfs, tmp_path / f"{name}-layout")
    _add_layer(tmp_path / f"{name}-layout", [_entry("opt", tarfile.DIRTYPE),
                                             _entry("opt/linked.txt", tarfile.LNKTYPE, target)])
    return base


@pytest.mark.parametrize("differ", ["overlay", "snapshot"])
def test_a_base_layers_link_to_a_file_of_a_lower_layer(
        build: Builder, tmp_path: Path, differ: str, docker_engine: DockerEngine) -> None:
    """A layer pybuild did not make hard-links to a file only a lower layer holds: Docker
    (vfs, overlay2) and containerd accept it, and so does a build FROM it: RUN sees one
    file under both names, and Docker runs the result the same."""
    base = _base_with_link(tmp_path, "data/lower.txt")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\nRUN cat /opt/linked.txt > /seen && echo more >> /opt/linked.txt\n")
    out, archive = tmp_path / "out", tmp_path / "image.tar"
    build(ctx, local=out, docker=archive, differ=differ)
    assert (out / "seen").read_text() == "from the lower layer\n"
    assert (out / "data/lower.txt").read_text() == "from the lower layer\nmore\n"
    assert len(_group(out, "data/lower.txt", "opt/linked.txt")) == 1
    assert os.lstat(out / "data").st_mode & 0o777 == 0o750  # copied up as it was
    assert os.lstat(out / "data/lower.txt").st_mode & 0o777 == 0o640
    loaded = docker_engine.run("load", "-i", str(archive)).stdout
    image = loaded.rsplit("Loaded image ID: ", 1)[1].strip()
    try:
        shown = docker_engine.run_container(
            image, "sh", "-c", "cat /seen /opt/linked.txt; stat -c '%i %h' /opt/linked.txt "
            "/data/lower.txt")
    finally:
        docker_engine.run("rmi", "--force", image, check=False)
    lines = shown.splitlines()
    assert lines[:3] == ["from the lower layer", "from the lower layer", "more"]
    assert len(lines) == 5 and lines[3] == lines[4] and lines[3].endswith(" 2")  # one inode


def test_a_base_layers_link_to_a_missing_file_is_named(build: Builder, tmp_path: Path) -> None:
    base = _base_with_link(tmp_path, "data/nowhere.txt")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN true\n")
    with pytest.raises(Exception, match=r"hard link target 'data/nowhere.txt' does not "
                       r"exist \(it is neither in the layer \(before the link\) nor in the "
                       "layers below it"):
        build(ctx, local=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_link_layer_on_two_different_bases_links_to_each_ones_file(
        build: Builder, tmp_path: Path) -> None:
    """The same linking layer (one diff_id) on two bases whose linked file differs: each
    build sees its own base's file. The copy made for one base is never reused for the
    other (it is kept by the layer's chain of layers, not by its diff_id alone)."""
    storage = tmp_path / "storage"
    seen = []
    for content in ("first base\n", "second base\n"):
        name = content.split()[0]
        base = _base_with_link(tmp_path, "data/lower.txt", content, name)
        ctx = tmp_path / f"ctx-{name}"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN cat /opt/linked.txt > /seen\n")
        out = tmp_path / f"out-{name}"
        build(ctx, local=out, storage=storage)
        seen.append((out / "seen").read_text())
    assert seen == ["first base\n", "second base\n"]
