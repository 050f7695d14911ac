"""Piece-level push through a real ``pybuild serve``: ``pybuild push`` of v2 after v1 sends
only the changed pieces (counted by the server's own metrics), another store pulls it,
and Docker and skopeo pull and run what was assembled from pieces."""

from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cas.frames import gzip_member
from testkit.clients import run, skopeo
from testkit.docker_engine import DockerEngine
from testkit.images import Image, Layer, make_image, tar_files, write_oci_layout
from testkit.registries import free_port, http, pybuild_configured_registry

pytestmark = pytest.mark.slow

FILES = 8
FILE_SIZE = 512 << 10
CHUNK = 64 << 10


def data_layer(files: dict[str, bytes]) -> Layer:
    """A tar of ``files`` as one gzip member per 64 KiB of tar (as pybuild writes layers)."""
    tar = tar_files(files)
    blob = b"".join(gzip_member(tar[i : i + CHUNK], level=1) for i in range(0, len(tar), CHUNK))
    return Layer(tar=tar, blob=blob)


def pybuild(storage: Path, *args: str) -> list[dict[str, object]]:
    """``pybuild ARGS --storage STORAGE --json``: every JSON event it printed."""
    proc = subprocess.run(
        [sys.executable, "-m", "builder", *args, "--storage", str(storage), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def received(debug: str) -> float:
    text = http(debug, "GET", "/metrics").body.decode()
    found = re.search(r"^pybuild_registry_bytes_received_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_push_of_v2_sends_changed_pieces_and_docker_and_skopeo_pull_it(
    docker_engine: DockerEngine, busybox: Image, unique: str, tmp_path: Path,
) -> None:
    rng = random.Random(1)
    files = {f"data/file{i}": rng.randbytes(FILE_SIZE) for i in range(FILES)}
    changed = dict(files, **{"data/file5": random.Random(2).randbytes(FILE_SIZE)})
    images = {}
    for tag, content in (("v1", files), ("v2", changed)):
        image = make_image([*busybox.layers, data_layer(content)], cmd=("sh",))
        images[tag] = image
        write_oci_layout(image, tmp_path / f"layout-{tag}")
    debug = f"127.0.0.1:{free_port()}"
    store = tmp_path / "store"
    with pybuild_configured_registry(tmp_path / "registry", {"http": {"debug": {"addr": debug}}}) as reg:
        repo = f"e2e/pieces-{unique}"
        for tag in ("v1", "v2"):
            pybuild(store, "copy", f"oci:{tmp_path / f'layout-{tag}'}:latest", f"local:{reg.ref(repo, tag)}")
        pybuild(store, "push", reg.ref(repo, "v1"))
        before = received(debug)
        events = pybuild(store, "push", reg.ref(repo, "v2"))
        sent = received(debug) - before
        layer = images["v2"].layers[-1]
        # file5 (512 KiB) spans 9 of the layer's 64 KiB members; plans, config and manifest
        # are a few KB more.
        assert sent <= 10 * CHUNK + 64_000, sent
        assert sent < len(layer.blob) / 4
        summary = next(e for e in events if e.get("event") == "summary")
        assert int(summary["reused"]) >= len(layer.blob) - 10 * CHUNK  # type: ignore[arg-type]
        done = [e for e in events if e.get("event") == "done" and e.get("id") == layer.digest]
        assert done and done[0]["status"] == "pushed" and int(done[0]["reused"]) > 0  # type: ignore[arg-type]

        # Another store pulls the assembled blob (piece by piece is checked elsewhere).
        pulled = pybuild(tmp_path / "store2", "pull", reg.ref(repo, "v2"))
        assert pulled[-1]["digest"] == images["v2"].manifest_digest

        remote = reg.ref(repo, "v2")
        try:
            out = docker_engine.run("pull", remote).stdout
            assert f"Digest: {images['v2'].manifest_digest}" in out
            digest = docker_engine.run_container(remote, "sha256sum", "/data/file5").split()[0]
            assert digest == hashlib.sha256(changed["data/file5"]).hexdigest()
        finally:
            docker_engine.run("rmi", "--force", remote, check=False)
        run(skopeo("copy", "--src-tls-verify=false", f"docker://{remote}",
                   f"oci:{tmp_path / 'skopeo'}:v2"))
        index = json.loads((tmp_path / "skopeo" / "index.json").read_text())
        assert index["manifests"][0]["digest"] == images["v2"].manifest_digest


def test_build_push_of_a_changed_file_sends_its_pieces_only(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "data").mkdir(parents=True)
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY data /data\n")
    rng = random.Random(3)
    for i in range(FILES):
        (ctx / "data" / f"file{i}").write_bytes(rng.randbytes(FILE_SIZE))
    debug = f"127.0.0.1:{free_port()}"
    storage = tmp_path / "storage"

    def build(ref: str) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "build", "--storage", str(storage), "--progress",
             "plain", "-t", ref, "--push", str(ctx)],
            capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr

    with pybuild_configured_registry(tmp_path / "registry", {"http": {"debug": {"addr": debug}}}) as reg:
        build(reg.ref("e2e/built", "1"))
        first = received(debug)
        assert first >= FILES * FILE_SIZE
        (ctx / "data" / "file4").write_bytes(random.Random(4).randbytes(FILE_SIZE))
        build(reg.ref("e2e/built", "2"))
        sent = received(debug) - first
        # The changed file and the frames around it (content-defined, ~1 MiB at most
        # either side), plans, config and manifest; not the 4 MiB layer.
        assert sent < FILE_SIZE + (2 << 20) and sent < first / 3, (sent, first)
        pulled = pybuild(tmp_path / "fresh", "pull", reg.ref("e2e/built", "2"))
        assert str(pulled[-1]["digest"]).startswith("sha256:")
