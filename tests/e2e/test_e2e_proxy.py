"""``pybuild serve`` as a pull-through cache of CNCF Distribution, with real clients:
a Docker engine configured with ``registry-mirrors``, skopeo, and 20 concurrent pulls
counted in the upstream's access log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.clients import run, skopeo
from testkit.docker_engine import remove_tree, start_dockerd, stop_dockerd
from testkit.images import (
    Image,
    make_image,
    make_layer,
    read_oci_layout,
    tar_files,
    write_oci_layout,
)
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
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
    """Distribution (access log on) and ``pybuild serve --config`` mirroring it (ttl 0)."""
    with _proxied(tmp_path, lambda addr: f"proxy:\n  remoteurl: http://{addr}\n  ttl: 0\n") \
            as setup:
        yield setup


@contextmanager
def _proxied(tmp_path: Path, proxy_yaml: Callable[[str], str]) -> Iterator[Setup]:
    """Distribution, and pybuild serve configured by ``proxy_yaml(its address)``."""
    require_tool("docker-registry")
    upstream_process = RegistryProcess(
        "distribution", distribution_argv(tmp_path / "upstream", access_log=True),
        storage=tmp_path / "upstream" / "storage", log=tmp_path / "upstream" / "registry.log",
    )
    (tmp_path / "upstream").mkdir(parents=True)
    upstream = upstream_process.start()
    config = tmp_path / "mirror.yaml"
    config.write_text(proxy_yaml(upstream.addr))
    storage = tmp_path / "mirror"

    def argv(addr: str) -> list[str]:
        return [sys.executable, "-m", "builder", "serve", "--addr", addr,
                "--storage", str(storage), "--config", str(config)]

    # tests/conftest.py puts this checkout on PYTHONPATH: the process runs its code.
    mirror_process = RegistryProcess("pybuild", argv, storage=storage,
                                     log=tmp_path / "mirror.log")
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


def test_docker_and_nineteen_skopeo_pulls_at_once_fetch_each_blob_once(
    proxied: Setup, busybox: Image, tmp_path: Path
) -> None:
    """Twenty real clients at the same moment - a Docker engine through
    ``registry-mirrors`` and nineteen ``skopeo copy`` - pull an image whose layers take a
    while to come: each blob and the manifest cost the upstream one GET, every client
    gets the image whole; then, with the upstream hung, both pull it again."""
    require_tool("dockerd")
    # Two layers of 8 MiB of random bytes beside busybox's: the pulls meet transfers
    # that are under way (single flight, streaming), not blobs already stored.
    data = [make_layer(tar_files({f"data/{i}.bin": os.urandom(8 << 20)}), level=1)
            for i in range(2)]
    image = make_image([*busybox.layers, *data], cmd=("sh",))
    layout = write_oci_layout(image, tmp_path / "layout")
    name = f"pbproxy-{uuid.uuid4().hex[:8]}"
    repository = f"library/{name}"
    _push(layout, proxied.upstream, repository, "v1")
    workdir = Path(tempfile.mkdtemp(prefix="pbm", dir="/tmp"))
    engine, proc = start_dockerd(
        workdir, extra_args=[f"--registry-mirror=http://{proxied.mirror.addr}"]
    )
    try:
        ready = threading.Barrier(20)

        def pull(i: int) -> None:
            ready.wait(timeout=60)
            if i == 0:
                pulled = engine.run("pull", f"{name}:v1", timeout=300).stdout
                assert f"Digest: {image.manifest_digest}" in pulled
            else:
                _check_skopeo(proxied.mirror, repository, image, tmp_path / f"pulled-{i}")

        with ThreadPoolExecutor(20) as pool:
            list(pool.map(pull, range(20)))
        log = proxied.upstream_process.log
        for digest in image.blobs():
            assert _upstream_gets(log, f"/v2/{repository}/blobs/{digest}") == 1, digest
        manifest_gets = re.findall(rf'"GET /v2/{re.escape(repository)}/manifests/\S+ HTTP/1\.1" 200 ',
                                   log.read_text(errors="replace"))
        assert len(manifest_gets) == 1
        assert engine.run_container(f"{name}:v1", "sh", "-c", "wc -c < /data/1.bin") == \
            f"{8 << 20}\n"

        # The upstream hangs (stopped, not gone: its port accepts and never answers),
        # which costs a pull of the cached tag a few seconds, not the HTTP timeouts.
        upstream_pid = proxied.upstream_process.pid
        assert upstream_pid is not None
        os.kill(upstream_pid, signal.SIGSTOP)
        try:
            engine.run("rmi", "--force", f"{name}:v1")
            pulled = engine.run("pull", f"{name}:v1", timeout=100).stdout
            assert f"Digest: {image.manifest_digest}" in pulled
            assert engine.run_container(f"{name}:v1", "sh", "-c", "wc -c < /data/0.bin") == \
                f"{8 << 20}\n"
            _check_skopeo(proxied.mirror, repository, image, tmp_path / "pulled-cached")
        finally:
            os.kill(upstream_pid, signal.SIGCONT)
    finally:
        stop_dockerd(proc, workdir)


def test_a_tag_changed_upstream_is_seen_after_ttl_and_not_before(
    tmp_path: Path, busybox: Image, busybox_layout: Path
) -> None:
    other = make_image([make_layer(tar_files({"hello.txt": b"a new version\n"}))])
    other_layout = write_oci_layout(other, tmp_path / "other")
    with _proxied(tmp_path / "run",
                  lambda addr: f"proxy:\n  remoteurl: http://{addr}\n  ttl: 3s\n") as setup:
        _push(busybox_layout, setup.upstream, "e2e/app", "v1")
        first = get_manifest(setup.mirror.addr, "e2e/app", "v1")
        assert first.headers["docker-content-digest"] == busybox.manifest_digest
        _push(other_layout, setup.upstream, "e2e/app", "v1")
        assert get_manifest(setup.upstream.addr, "e2e/app", "v1").body == other.manifest
        again = get_manifest(setup.mirror.addr, "e2e/app", "v1")
        assert again.headers["docker-content-digest"] == busybox.manifest_digest
        time.sleep(3.2)
        later = get_manifest(setup.mirror.addr, "e2e/app", "v1")
        assert later.headers["docker-content-digest"] == other.manifest_digest
        _check_skopeo(setup.mirror, "e2e/app", other, tmp_path / "pulled")


@contextmanager
def _containerd() -> Iterator[Path]:
    """A private containerd (its own root, state and socket under a short directory)."""
    require_tool("containerd")
    workdir = Path(tempfile.mkdtemp(prefix="pbc", dir="/tmp"))
    sock = workdir / "c.sock"
    with open(workdir / "log", "wb") as log:
        proc = subprocess.Popen(
            ["containerd", "-c", "/dev/null", "--root", str(workdir / "root"),
             "--state", str(workdir / "state"), "--address", str(sock)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, (workdir / "log").read_text()
            assert time.monotonic() < deadline, "containerd did not start"
            time.sleep(0.05)
        yield sock
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        remove_tree(workdir)


def test_containerd_mirror_names_its_upstream_with_ns(
    tmp_path: Path, busybox: Image, busybox_layout: Path
) -> None:
    require_tool("ctr")

    def config(addr: str) -> str:
        return (f"proxy:\n  upstreams:\n    - host: registry.example\n"
                f"      remoteurl: http://{addr}\n")

    with _proxied(tmp_path / "run", config) as setup, _containerd() as sock:
        _push(busybox_layout, setup.upstream, "org/app", "v1")
        hosts = tmp_path / "hosts" / "registry.example"
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            'server = "https://registry.example"\n\n'
            f'[host."http://{setup.mirror.addr}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        # registry.example does not exist: containerd reaches it only through the mirror,
        # which it tells the registry it means with ?ns=registry.example.
        run(["ctr", "--address", str(sock), "--namespace", "pbtest", "content", "fetch",
             "--hosts-dir", str(tmp_path / "hosts"), "registry.example/org/app:v1"])
        listed = run(["ctr", "--address", str(sock), "--namespace", "pbtest", "images", "ls"])
        assert busybox.manifest_digest in listed.stdout
        assert list_tags(setup.mirror.addr, "registry.example/org/app") == ["v1"]
        layer = busybox.layers[0].digest
        got = http(setup.mirror.addr, "GET", f"/v2/registry.example/org/app/blobs/{layer}")
        assert got.body == busybox.layers[0].blob
