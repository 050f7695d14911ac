"""Registries to test against: pybuild's own (in-process) and CNCF Distribution."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.client.image_store import ImageStore
from registry.client.remote import ClientOptions, RegistryClient
from registry.server import ServerConfig, make_app

from .helpers import Proxy

TESTFILES = Path(__file__).parent / "testfiles"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def pybuild_registry(aiohttp_server: Any, tmp_path: Path) -> str:
    """host:port of a pybuild registry running in this event loop."""
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "registry"))
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of CNCF Distribution (Debian's docker-registry) with storage in tmp."""
    binary = shutil.which("docker-registry") or shutil.which("registry")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-registry (CNCF Distribution) is not installed; tests/run installs it")
        pytest.skip("docker-registry (CNCF Distribution) is not installed")
    tmp = tmp_path_factory.mktemp("distribution")
    port = free_port()
    config = (TESTFILES / "distribution.yaml").read_text()
    config = config.replace("@ROOT@", str(tmp / "data")).replace("@ADDR@", f"127.0.0.1:{port}")
    (tmp / "config.yml").write_text(config)
    log = open(tmp / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, "serve", str(tmp / "config.yml")],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start: {(tmp / 'registry.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture(params=["pybuild", "distribution"])
def registry_host(request: pytest.FixtureRequest) -> str:
    """Each test runs against both registries."""
    return str(request.getfixturevalue(f"{request.param}_registry" if request.param == "pybuild"
                                       else "distribution"))


@pytest.fixture
async def images(tmp_path: Path) -> AsyncIterator[ImageStore]:
    store = await ImageStore.open(tmp_path / "local")
    yield store
    await store.close()


@pytest.fixture
async def images2(tmp_path: Path) -> AsyncIterator[ImageStore]:
    store = await ImageStore.open(tmp_path / "local2")
    yield store
    await store.close()


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    async with RegistryClient(ClientOptions(retries=2, backoff=0.01)) as c:
        yield c


@pytest.fixture
def make_proxy(aiohttp_server: Any) -> Any:
    async def make(upstream_host: str, **kw: Any) -> tuple[Proxy, str]:
        proxy = Proxy(f"http://{upstream_host}", **kw)
        server = await aiohttp_server(proxy.app())
        return proxy, f"127.0.0.1:{server.port}"

    return make



