"""Importing a directory as a base layer; layers checked by a real OCI tool (umoci)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from layer_helpers import need_tool, tree_state

from builder.layers import (
    MEDIA_TYPE_GZIP,
    LayerBlob,
    apply_layer,
    diff_snapshot,
    import_directory,
    make_busybox_rootfs,
    take_snapshot,
    write_layer,
)

EPOCH = 1_700_000_000


@pytest.fixture
def busybox_root(tmp_path: Path) -> Path:
    need_tool("busybox")
    return make_busybox_rootfs(tmp_path / "busybox")


def test_busybox_rootfs_has_relative_applet_links(busybox_root: Path) -> None:
    assert os.readlink(busybox_root / "bin" / "sh") == "busybox"
    assert os.readlink(busybox_root / "usr" / "bin" / "awk") == "../../bin/busybox"
    assert (busybox_root / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_imported_busybox_runs_after_extraction(busybox_root: Path, tmp_path: Path) -> None:
    blob = io.BytesIO()
    layer = import_directory(busybox_root, blob, source_date_epoch=EPOCH)
    assert layer.media_type == MEDIA_TYPE_GZIP
    out = tmp_path / "unpacked"
    out.mkdir()
    apply_layer(io.BytesIO(blob.getvalue()), out)
    assert tree_state(out) == tree_state(busybox_root)
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("chroot needs root in CI")
        pytest.skip("chroot needs root")
    proc = subprocess.run(["chroot", str(out), "/bin/sh", "-c", "echo ok; /usr/bin/basename /a/b"],
                          capture_output=True, text=True, check=True)
    assert proc.stdout == "ok\nb\n"


def test_import_is_reproducible(busybox_root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(busybox_root, copy, symlinks=True)
    first = import_directory(busybox_root, io.BytesIO(), source_date_epoch=EPOCH)
    second = import_directory(copy, io.BytesIO(), source_date_epoch=EPOCH, workers=1)
    assert first == second


def test_owner_override(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "f").write_text("x")
    if os.geteuid() == 0:
        os.chown(root / "f", 1000, 1000)
    blob = io.BytesIO()
    import_directory(root, blob, owner=(0, 0))
    with tarfile.open(fileobj=io.BytesIO(blob.getvalue())) as tf:
        assert [(m.name, m.uid, m.gid) for m in tf] == [("f", 0, 0)]


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_layout(layout: Path, layers: list[tuple[LayerBlob, bytes]]) -> None:
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    config = {
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [str(b.diff_id) for b, _ in layers]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(layout, json.dumps(config).encode())},
        "layers": [{"mediaType": b.media_type, **_blob(layout, data)} for b, data in layers],
    }
    for (b, _data), desc in zip(layers, manifest["layers"]):
        assert desc["digest"] == str(b.digest) and desc["size"] == b.size
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       **_blob(layout, json.dumps(manifest).encode()),
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}],
    }
    (layout / "index.json").write_text(json.dumps(index))


def test_umoci_unpacks_base_and_whiteout_layers(busybox_root: Path, tmp_path: Path) -> None:
    umoci = need_tool("umoci")
    base = io.BytesIO()
    base_layer = import_directory(busybox_root, base, source_date_epoch=EPOCH)
    # A second step on a copy: deletions, a replaced directory, new files.
    work = tmp_path / "work"
    shutil.copytree(busybox_root, work, symlinks=True)
    before = take_snapshot(work)
    os.unlink(work / "usr" / "bin" / "awk")
    shutil.rmtree(work / "sbin")
    (work / "etc" / "motd").write_text("built by pybuild\n")
    (work / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/ash\n")
    os.symlink("/etc/motd", work / "motd")
    top = io.BytesIO()
    top_layer = write_layer(diff_snapshot(before, work), top, source_date_epoch=EPOCH)

    layout = tmp_path / "layout"
    write_oci_layout(layout, [(base_layer, base.getvalue()), (top_layer, top.getvalue())])
    bundle = tmp_path / "bundle"
    args = [umoci, "unpack", "--image", f"{layout}:latest", str(bundle)]
    if os.geteuid() != 0:
        args.insert(2, "--rootless")
    proc = subprocess.run(args, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert tree_state(bundle / "rootfs") == tree_state(work)
