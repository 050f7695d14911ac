"""Real OCI clients against ``pybuild serve``: skopeo and podman.

These need the tools installed (tests/run installs them). Without them the tests skip,
except in CI (``CI`` set), where a missing tool is a failure.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from .test_serve_process import ROOT, Server


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI (tests/run installs it)")
        pytest.skip(f"{tool} is not installed")
    return path


def make_oci_layout(root: Path, tag: str, payload: bytes) -> str:
    """Write a one-layer OCI image layout at ``root``; returns the manifest digest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    raw = buf.getvalue()
    layer = gzip.compress(raw, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/payload.bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(layer), "size": len(layer)}],
    }).encode()
    digest = put(manifest)
    (root / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                       "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": tag}}],
    }))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return digest


def _run(*args: str) -> str:
    result = subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "storage")
    srv.start()
    yield srv
    srv.stop()


def test_skopeo_round_trip_keeps_digests(server, tmp_path):
    skopeo = _need("skopeo")
    src = tmp_path / "src"
    digest = make_oci_layout(src, "v1", os.urandom(200_000))
    ref = f"127.0.0.1:{server.port}/round/trip:v1"
    _run(skopeo, "copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{ref}")
    inspect = json.loads(_run(skopeo, "inspect", "--tls-verify=false", f"docker://{ref}"))
    assert inspect["Digest"] == digest
    dst = tmp_path / "dst"
    _run(skopeo, "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dst}:v1")
    index = json.loads((dst / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest
    assert sorted(p.name for p in (dst / "blobs" / "sha256").iterdir()) == sorted(
        p.name for p in (src / "blobs" / "sha256").iterdir()
    )
    for blob in (src / "blobs" / "sha256").iterdir():
        assert (dst / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


def test_same_image_in_two_repositories_is_stored_once(server, tmp_path):
    skopeo = _need("skopeo")
    src = tmp_path / "src"
    make_oci_layout(src, "v1", os.urandom(2_000_000))
    for repo in ("team-a/app", "team-b/app"):
        _run(skopeo, "copy", "--dest-tls-verify=false", f"oci:{src}:v1",
             f"docker://127.0.0.1:{server.port}/{repo}:v1")
    out = subprocess.run(
        [sys.executable, "-m", "builder", "storage", "stats", "--json", "--storage", str(server.storage)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    stats = json.loads(out)
    # config, layer and manifest: each once, although both repositories hold all three.
    assert stats["blobs"] == 3
    layer_size = max(p.stat().st_size for p in (src / "blobs" / "sha256").iterdir())
    assert stats["logical_bytes"] < 2 * layer_size
    assert stats["physical_bytes"] < 2 * layer_size


def test_podman_pull(server, tmp_path):
    podman = _need("podman")
    skopeo = _need("skopeo")
    src = tmp_path / "src"
    digest = make_oci_layout(src, "v1", b"podman payload")
    ref = f"127.0.0.1:{server.port}/pod/img:v1"
    _run(skopeo, "copy", "--dest-tls-verify=false", f"oci:{src}:v1", f"docker://{ref}")
    # podman wants a short runroot path.
    with tempfile.TemporaryDirectory(prefix="pbp-") as runroot:
        store = ["--root", str(tmp_path / "podman-root"), "--runroot", runroot,
                 "--storage-driver", "vfs"]
        _run(podman, *store, "pull", "--tls-verify=false", ref)
        out = json.loads(_run(podman, *store, "image", "inspect", ref))
        assert out[0]["Digest"] == digest
        _run(podman, *store, "rmi", "-a", "-f")
