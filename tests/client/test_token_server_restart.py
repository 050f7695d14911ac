"""A token server (the realm of a registry's Bearer challenge, on another port) that
restarts while a command runs: the client waits for it as it waits for a restarting
registry (:mod:`registry.client.refusals`), saying so, and goes on once it is back; a
token server that stays down is given up after the same bounded time, the message saying
for how long it refused."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from registry.client.auth import AuthError
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient

from .helpers import simple_image, store_image
from .test_auth import TokenGate


async def _copy(client: RegistryClient, images: ImageStore, src: str, dst: str) -> Any:
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions())


async def test_a_push_rides_out_a_token_server_restart(
    pybuild_registry: str, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, issuer = TokenGate(pybuild_registry), TokenGate(pybuild_registry)
    front = await aiohttp_server(gate.app())
    tokens = await aiohttp_server(issuer.app())  # its /token only
    port = tokens.port
    gate.realm = f"http://127.0.0.1:{port}/token"
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "alice")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "secret")
    told: list[str] = []
    back: list[asyncio.Task[Any]] = []

    def notice(line: str) -> None:
        told.append(line)
        if not back:  # the client has met the outage: the token server comes back now
            back.append(asyncio.ensure_future(aiohttp_server(issuer.app(), port=port)))

    host = f"127.0.0.1:{front.port}"
    image = simple_image(41, (20_000,))
    options = ClientOptions(backoff=0.05, notice=notice)
    async with await ImageStore.open(tmp_path / "a") as images, RegistryClient(options) as client:
        await store_image(images, f"{host}/auth/app:v1", image)
        await _copy(client, images, f"local:{host}/auth/app:v1", f"{host}/auth/app:v1")
        asked = len(issuer.token_requests)
        await tokens.close()  # down: refuses connections
        # Another repository: scopes with no token yet, so the token server is asked.
        pushed = await _copy(client, images, f"local:{host}/auth/app:v1", f"{host}/auth/copy:v1")
    assert pushed.digest == image.digest
    assert back and back[0].done()
    assert told[0].startswith(f"cannot connect to 127.0.0.1:{port} (connection refused): retrying in "), told
    assert any("repository:auth/copy:pull,push" in r["scope"] for r in issuer.token_requests[asked:])


async def test_a_token_server_that_stays_down_is_given_up_after_the_outage(
    pybuild_registry: str, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate, issuer = TokenGate(pybuild_registry), TokenGate(pybuild_registry)
    front = await aiohttp_server(gate.app())
    tokens = await aiohttp_server(issuer.app())
    realm = gate.realm = f"http://127.0.0.1:{tokens.port}/token"
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "alice")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "secret")
    host = f"127.0.0.1:{front.port}"
    told: list[str] = []
    options = ClientOptions(backoff=0.05, outage=0.5, notice=told.append)
    async with await ImageStore.open(tmp_path / "a") as images, RegistryClient(options) as client:
        await store_image(images, f"{host}/auth/app:v1", simple_image(42, (1000,)))
        await _copy(client, images, f"local:{host}/auth/app:v1", f"{host}/auth/app:v1")
        await tokens.close()
        with pytest.raises(AuthError) as info:
            await _copy(client, images, f"local:{host}/auth/app:v1", f"{host}/auth/copy:v1")
    message = str(info.value)
    assert message.startswith(f"cannot reach token server {realm} for {host}: "), message
    assert re.search(r"connection refused \(it answered earlier, then refused connections for \d+ s\)",
                     message), message
    assert told and "giving up after 0.5 s" in told[0], told
