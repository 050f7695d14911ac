"""The test infrastructure itself: image packer, tool lookup, registry processes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from testkit.images import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Image,
    busybox_image,
    make_image,
    make_layer,
    read_oci_layout,
    tar_files,
    write_docker_archive,
    write_oci_layout,
)
from testkit.registries import (
    RegistryError,
    RegistryProcess,
    RunningRegistry,
    http,
)
from testkit.tools import require_tool


def test_busybox_image_is_deterministic(busybox: Image, busybox_rootfs: Path) -> None:
    again = busybox_image(busybox_rootfs)
    assert again.manifest_digest == busybox.manifest_digest
    assert again.layers[0].blob == busybox.layers[0].blob


def test_busybox_layer_holds_every_applet_as_a_relative_symlink(busybox: Image) -> None:
    with tarfile.open(fileobj=io.BytesIO(busybox.layers[0].tar)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "busybox"
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
    assert {m.uid for m in members.values()} == {0}
    assert {m.mtime for m in members.values()} == {0}
    names = list(members)
    assert names == sorted(names, key=lambda n: n.split("/"))


def test_config_and_manifest_describe_the_layer(busybox: Image) -> None:
    config = json.loads(busybox.config)
    layer = busybox.layers[0]
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": ["sha256:" + hashlib.sha256(gzip.decompress(layer.blob)).hexdigest()],
    }
    assert config["config"]["Cmd"] == ["sh"]
    assert len(config["history"]) == 1
    manifest = json.loads(busybox.manifest)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert manifest["config"]["digest"] == busybox.config_digest
    assert manifest["layers"] == [
        {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": len(layer.blob)}
    ]


def test_oci_layout_round_trip_and_refs(busybox: Image, tmp_path: Path) -> None:
    other = make_image([make_layer(tar_files({"hello.txt": b"hello\n"}))])
    layout = write_oci_layout(busybox, tmp_path / "layout", ref="one")
    write_oci_layout(other, layout, ref="two")
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert read_oci_layout(layout, "one").manifest == busybox.manifest
    assert read_oci_layout(layout, "two").manifest == other.manifest
    with pytest.raises(ValueError, match="expected one manifest"):
        read_oci_layout(layout)

    # A corrupted blob is caught on read.
    blob = layout / "blobs" / "sha256" / other.layers[0].digest.split(":")[1]
    blob.write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="does not match its digest"):
        read_oci_layout(layout, "two")


def test_docker_archive_layout(busybox: Image, tmp_path: Path) -> None:
    archive = write_docker_archive(busybox, tmp_path / "a.tar", repo_tags=["x/y:z"])
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        (entry,) = manifest
        assert entry["RepoTags"] == ["x/y:z"]
        assert tar.extractfile(entry["Config"]).read() == busybox.config  # type: ignore[union-attr]
        (layer_name,) = entry["Layers"]
        assert tar.extractfile(layer_name).read() == busybox.layers[0].tar  # type: ignore[union-attr]


def test_require_tool_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = "no-such-tool-for-pybuild-tests"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_tool(missing)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_tool(missing)
    assert require_tool(sys.executable) == sys.executable


def test_registry_process_that_dies_reports_its_log(tmp_path: Path) -> None:
    process = RegistryProcess(
        "broken",
        lambda addr: [sys.executable, "-c", f"print('cannot listen on {addr}'); raise SystemExit(3)"],
        storage=tmp_path / "storage",
        log=tmp_path / "log",
    )
    with pytest.raises(RegistryError, match="cannot listen on 127.0.0.1:"):
        process.start()
    assert process.pid is None


def test_distribution_answers_v2_and_stops(distribution: RunningRegistry) -> None:
    resp = http(distribution.addr, "GET", "/v2/")
    assert resp.status == 200
    assert resp.headers["docker-distribution-api-version"] == "registry/2.0"
