"""``pybuild serve`` as a pull-through cache of CNCF Distribution, with real clients:
a Docker engine configured with ``registry-mirrors``, skopeo, and 20 concurrent pulls
counted in the upstream's access log."""

from __future__ import annotations

import re
import sys
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.clients import run, skopeo
from testkit.docker_engine import start_dockerd, stop_dockerd
from testkit.images import Image, read_oci_layout
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    _python_env,
    distribution_argv,
    get_manifest,
    http,
    list_tags,
)
from testkit.tools import require_tool

pytestmark = pytest.mark.slow


@dataclass
class Setup:
    upstream: RunningRegistry
    upstream_process: RegistryProcess
    mirror: RunningRegistry


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Setup]:
    """Distribution (access log on) and ``pybuild serve --config`` mirroring it."""
    require_tool("docker-registry")
    upstream_process = RegistryProcess(
        "distribution", distribution_argv(tmp_path / "upstream", access_log=True),
        storage=tmp_path / "upstream" / "storage", log=tmp_path / "upstream" / "registry.log",
    )
    (tmp_path / "upstream").mkdir()
    upstream = upstream_process.start()
    config = tmp_path / "mirror.yaml"
    config.write_text(f"proxy:\n  remoteurl: http://{upstream.addr}\n  ttl: 0\n")
    storage = tmp_path / "mirror"

    def argv(addr: str) -> list[str]:
        return [sys.executable, "-m", "builder", "serve", "--addr", addr,
                "--storage", str(storage), "--config", str(config)]

    mirror_process = RegistryProcess("pybuild", argv, storage=storage,
                                     log=tmp_path / "mirror.log", env=_python_env(None))
    try:
        mirror = mirror_process.start()
        yield Setup(upstream, upstream_process, mirror)
    finally:
        mirror_process.stop()
        upstream_process.stop()


def _push(layout: Path, registry: RunningRegistry, repository: str, tag: str) -> None:
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
               f"docker://{registry.ref(repository, tag)}"))


def _upstream_gets(log: Path, path: str) -> int:
    pattern = re.compile(rf'"GET {re.escape(path)} HTTP/1\.1" 200 ')
    return len(pattern.findall(log.read_text(errors="replace")))


def test_docker_registry_mirror_pulls_through_and_survives_the_upstream(
    proxied: Setup, busybox: Image, busybox_layout: Path, tmp_path: Path
) -> None:
    require_tool("dockerd")
    name = f"pbproxy-{uuid.uuid4().hex[:8]}"
    _push(busybox_layout, proxied.upstream, f"library/{name}", "v1")
    workdir = Path(tempfile.mkdtemp(prefix="pbm", dir="/tmp"))
    engine, proc = start_dockerd(
        workdir, extra_args=[f"--registry-mirror=http://{proxied.mirror.addr}"]
    )
    try:
        # A Docker Hub name: the engine asks its mirror, and has no other way out.
        pulled = engine.run("pull", f"{name}:v1").stdout
        assert f"Digest: {busybox.manifest_digest}" in pulled
        assert engine.run_container(f"{name}:v1", "echo", "hello") == "hello\n"
        _check_skopeo(proxied.mirror, f"library/{name}", busybox, tmp_path / "first")

        proxied.upstream_process.stop()
        engine.run("rmi", "--force", f"{name}:v1")
        pulled = engine.run("pull", f"{name}:v1").stdout
        assert f"Digest: {busybox.manifest_digest}" in pulled
        assert engine.run_container(f"{name}:v1", "echo", "cached") == "cached\n"
        _check_skopeo(proxied.mirror, f"library/{name}", busybox, tmp_path / "second")

        # Pushes are refused, and change nothing.
        refused = engine.run("push", f"{proxied.mirror.addr}/library/{name}:v2", check=False)
        assert refused.returncode != 0
        engine.run("tag", f"{name}:v1", f"{proxied.mirror.addr}/library/{name}:v2")
        refused = engine.run("push", f"{proxied.mirror.addr}/library/{name}:v2", check=False)
        assert refused.returncode != 0
        assert list_tags(proxied.mirror.addr, f"library/{name}") == ["v1"]
        assert run(skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:latest",
                          f"docker://{proxied.mirror.ref('library/skopeo', 'v1')}"),
                   check=False).returncode != 0
        assert http(proxied.mirror.addr, "GET", "/v2/_catalog").body.count(b"skopeo") == 0
    finally:
        stop_dockerd(proc, workdir)


def _check_skopeo(mirror: RunningRegistry, repository: str, image: Image, out: Path) -> None:
    run(skopeo("copy", "--src-tls-verify=false", f"docker://{mirror.ref(repository, 'v1')}",
               f"oci:{out}:v1"))
    pulled = read_oci_layout(out, "v1")
    assert pulled.manifest_digest == image.manifest_digest
    assert pulled.layer_digests == tuple(layer.digest for layer in image.layers)


def test_twenty_concurrent_pulls_fetch_each_blob_once(
    proxied: Setup, busybox: Image, busybox_layout: Path
) -> None:
    repository = f"e2e/concurrent-{uuid.uuid4().hex[:8]}"
    _push(busybox_layout, proxied.upstream, repository, "v1")
    blobs = [busybox.config_digest, *(layer.digest for layer in busybox.layers)]
    expected = busybox.blobs()

    def pull(_: int) -> None:
        resp = get_manifest(proxied.mirror.addr, repository, "v1")
        assert resp.status == 200
        assert resp.body == busybox.manifest
        for digest in blobs:
            got = http(proxied.mirror.addr, "GET", f"/v2/{repository}/blobs/{digest}",
                       timeout=120)
            assert got.status == 200
            assert got.body == expected[digest]

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(pull, range(20)))
    log = proxied.upstream_process.log
    for digest in blobs:
        assert _upstream_gets(log, f"/v2/{repository}/blobs/{digest}") == 1, digest
    # A layer's bytes are verified, stored as pieces and linked: later pulls need nothing.
    before = _upstream_gets(log, f"/v2/{repository}/blobs/{blobs[-1]}")
    pull(0)
    assert _upstream_gets(log, f"/v2/{repository}/blobs/{blobs[-1]}") == before
