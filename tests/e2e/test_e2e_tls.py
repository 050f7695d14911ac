"""``pybuild serve`` behind a team's own CA with client certificates (Distribution's
``http.tls.clientcas``), reached by skopeo with ``--cert-dir`` and by pybuild's client
with the same directory, as ``--cert-dir`` and as ``certs.d/HOST:PORT/``."""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.clients import run, skopeo
from testkit.docker_engine import DockerEngine
from testkit.registries import free_port
from tests.helpers.pki import Authority

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path, Authority]]:
    """A ``pybuild serve`` that wants client certificates; its address, a certificate
    directory with the CA and a client pair, and the CA."""
    with _tls_registry(tmp_path, client_cas=True) as registry:
        yield registry


@contextlib.contextmanager
def _tls_registry(tmp_path: Path, client_cas: bool) -> Iterator[tuple[str, Path, Authority]]:
    root = Authority(tmp_path)
    server = root.intermediate().issue("server")
    clients = Authority(tmp_path, "Client CA")
    member = clients.issue("member", ("ci",), client=True)
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(root.file, certs / "ca.crt")
    shutil.copy(member.cert, certs / "client.cert")
    shutil.copy(member.key, certs / "client.key")
    addr = f"127.0.0.1:{free_port()}"
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {tmp_path / 'reg'}}}}}\n"
                      f"http:\n  addr: {addr}\n  tls:\n    certificate: {server.cert}\n"
                      f"    key: {server.key}\n" + (f"    clientcas: [{clients.file}]\n" if client_cas else ""))
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "builder", "serve", "--config", str(config)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ctx = ssl.create_default_context(cafile=root.file)
    ctx.load_cert_chain(member.cert, member.key)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"https://{addr}/v2/", context=ctx, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pybuild serve did not start: {(tmp_path / 'serve.log').read_text()}")
                time.sleep(0.1)
        yield addr, certs, root
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _pybuild(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, env={**os.environ, "HOME": str(home)})


def test_skopeo_and_pybuild_reach_a_registry_that_wants_client_certificates(
        tls_registry: tuple[str, Path, Authority], busybox_layout: Path, tmp_path: Path) -> None:
    addr, certs, _ = tls_registry
    run(skopeo("copy", "--dest-cert-dir", str(certs), f"oci:{busybox_layout}:latest",
               f"docker://{addr}/team/busybox:1"))
    shown = run(skopeo("inspect", "--cert-dir", str(certs), f"docker://{addr}/team/busybox:1"))
    assert "team/busybox" in shown.stdout

    home = tmp_path / "home"
    pulled = _pybuild("pull", "--cert-dir", str(certs), "-q", "--storage", str(tmp_path / "a"),
                      f"{addr}/team/busybox:1", home=home)
    assert pulled.returncode == 0, pulled.stderr
    # The same files in ~/.config/containers/certs.d/HOST:PORT/, found by themselves.
    shutil.copytree(certs, home / ".config/containers/certs.d" / addr)
    pulled = _pybuild("pull", "-q", "--storage", str(tmp_path / "b"), f"{addr}/team/busybox:1", home=home)
    assert pulled.returncode == 0, pulled.stderr


def test_docker_pushes_to_and_pulls_from_pybuild_serve_over_tls(
        tmp_path: Path, docker_engine: DockerEngine, loaded_busybox: str, unique: str) -> None:
    # Docker takes a loopback registry as insecure: TLS, its certificate unchecked (and
    # /etc/docker/certs.d not read), so no client certificates here.
    with _tls_registry(tmp_path, client_cas=False) as (addr, certs, _):
        ref = f"{addr}/team/busybox:{unique}"
        docker_engine.run("tag", loaded_busybox, ref)
        try:
            docker_engine.run("push", ref)
            docker_engine.run("rmi", ref)
            docker_engine.run("pull", ref)
        finally:
            docker_engine.run("rmi", ref, check=False)
        shown = run(skopeo("inspect", "--cert-dir", str(certs), f"docker://{ref}"))
        assert "team/busybox" in shown.stdout
