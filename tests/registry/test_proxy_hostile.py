"""The pull-through cache against a hostile or broken upstream: a blob whose bytes are
not its digest, a manifest whose digest header lies, a blob that stalls half way, a token
realm that fails, a blob longer than it says, a transfer that breaks while two clients
wait for it. Nothing wrong is ever kept or served under the digest; clients get a
spec-shaped error naming the upstream; a later pull works once the upstream does."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cas import Digest
from registry.server import ServerConfig, make_app
from registry.server.state import REGISTRY

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _manifest(blob: bytes, declared: int | None = None) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(Digest.of(CONFIG)), "size": len(CONFIG)},
        "layers": [{"mediaType": LAYER, "digest": str(Digest.of(blob)),
                    "size": len(blob) if declared is None else declared}],
    }).encode()


class Hostile:
    """A fake upstream: ``/v2/`` answers 200, manifests and blobs come from ``manifest``
    and ``blob`` (handlers a test replaces), every request is counted."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.manifest: Handler = self._no
        self.blob: Handler = self._no
        self.base: Handler | None = None

    async def _no(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"errors": [{"code": "NAME_UNKNOWN", "message": "no"}]}, status=404)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/v2/":
            return await self.base(request) if self.base else web.json_response({})
        if "/manifests/" in request.path:
            return await self.manifest(request)
        if "/blobs/" in request.path:
            return await self.blob(request)
        return await self._no(request)

    def count(self, fragment: str) -> int:
        return sum(fragment in r for r in self.requests)


@pytest.fixture
async def hostile(aiohttp_server: Any) -> tuple[Hostile, str]:
    fake = Hostile()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    return fake, f"http://127.0.0.1:{server.port}"


@pytest.fixture
def mirror(aiohttp_client: Any, tmp_path: Path, hostile: tuple[Hostile, str]) -> Any:
    async def make(**overrides: Any) -> Any:
        config = dataclasses.replace(ServerConfig(log_access=False),
                                     proxy_remoteurl=hostile[1], **overrides)
        return await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))

    return make


def _blob_answer(data: bytes, *, length: int | None = None, first: int | None = None,
                 then: Callable[[], Awaitable[bytes | None]] | None = None) -> Handler:
    """A blob GET answered with ``data`` (Content-Length ``length``, default its length):
    ``first`` bytes at once, then what ``then()`` returns (None: the connection is cut)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(data) if length is None else length
        if request.method == "HEAD":
            return resp
        await resp.prepare(request)
        if first is None or then is None:
            await resp.write(data)
        else:
            await resp.write(data[:first])
            rest = await then()
            if rest is None:
                assert request.transport is not None
                request.transport.close()
                return resp
            await resp.write(rest)
        await resp.write_eof()
        return resp

    return answer


async def _nothing_kept(proxy: Any, digest: Digest) -> None:
    reg = proxy.server.app[REGISTRY]
    assert await reg.store.stat(digest) is None
    assert (await reg.store.stats()).open_ingests == 0


async def _error(resp: aiohttp.ClientResponse, status: int = 502) -> str:
    assert resp.status == status, await resp.text()
    doc = await resp.json()
    assert [e["code"] for e in doc["errors"]] == ["UNAVAILABLE"]
    return str(doc["errors"][0]["message"])


# --- blobs --------------------------------------------------------------------------

async def test_a_blob_longer_than_its_digest_says_is_not_kept(
    hostile: tuple[Hostile, str], mirror: Any
) -> None:
    """The upstream sends the blob's bytes and more (Content-Length says so): the bytes
    hash to another digest; nothing is kept, every kind of request is told so."""
    fake, url = hostile
    data = os.urandom(200_000)
    fake.blob = _blob_answer(data + os.urandom(5000))
    proxy = await mirror()
    d = Digest.of(data)
    streaming = await proxy.get(f"/v2/lib/app/blobs/{d}")
    if streaming.status == 200:  # streamed as it came: cut before the last byte
        with pytest.raises(aiohttp.ClientPayloadError):
            await streaming.read()
    else:
        assert url in await _error(streaming)
    message = await _error(await proxy.get(f"/v2/lib/app/blobs/{d}", headers={"Range": "bytes=0-9"}))
    assert str(d) in message and url in message and "not kept" in message
    assert (await proxy.head(f"/v2/lib/app/blobs/{d}")).status == 502
    await _nothing_kept(proxy, d)


async def test_a_blob_with_a_chunked_body_of_other_bytes_is_not_kept(
    hostile: tuple[Hostile, str], mirror: Any
) -> None:
    fake, _ = hostile
    data = os.urandom(100_000)

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(data[:50_000] + bytes(50_000))
        await resp.write_eof()
        return resp

    fake.blob = chunked
    proxy = await mirror()
    d = Digest.of(data)
    message = await _error(await proxy.get(f"/v2/lib/app/blobs/{d}"))
    assert "not kept" in message
    await _nothing_kept(proxy, d)


async def test_a_blob_that_stalls_half_way_does_not_hang_its_clients(
    hostile: tuple[Hostile, str], mirror: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upstream sends half the blob and then nothing, holding the connection: the
    mirror gives up after its upstream read timeout, the clients get an error (a cut
    stream, a 502), nothing partial is visible, and the next pull fetches it whole."""
    monkeypatch.setattr("registry.server.proxy_upstream.UPSTREAM_READ_TIMEOUT", 1.0)
    fake, url = hostile
    data = os.urandom(300_000)
    forever = asyncio.Event()

    async def stall() -> bytes | None:
        await forever.wait()
        return None

    fake.blob = _blob_answer(data, first=100_000, then=stall)
    proxy = await mirror()
    d = Digest.of(data)
    path = f"/v2/lib/app/blobs/{d}"
    started = time.monotonic()
    streaming = await proxy.get(path)
    waiting = asyncio.ensure_future(proxy.get(path, headers={"Range": "bytes=0-9"}))
    assert streaming.status == 200
    # What arrived before the stall is passed on at once.
    assert await asyncio.wait_for(streaming.content.readexactly(100_000), 5) == data[:100_000]
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(streaming.read(), 30)
    message = await _error(await asyncio.wait_for(waiting, 30))
    assert url in message and "no byte arrived for 1 s after byte 100000" in message
    assert time.monotonic() - started < 20
    assert fake.count(f"GET /v2/lib/app/blobs/{d}") == 1
    await _nothing_kept(proxy, d)
    forever.set()
    fake.blob = _blob_answer(data)
    resp = await proxy.get(path)
    assert resp.status == 200 and await resp.read() == data


async def test_two_clients_of_one_transfer_that_breaks_half_way_both_get_an_error(
    hostile: tuple[Hostile, str], mirror: Any
) -> None:
    """Single flight: two plain GETs and a ranged one share one upstream GET, which is cut
    half way. The streams are cut short (never a complete wrong body), the ranged one
    gets a 502 naming the upstream; nothing is kept; the next pull fetches it again."""
    fake, url = hostile
    data = os.urandom(400_000)
    go = asyncio.Event()

    async def cut() -> bytes | None:
        await go.wait()
        return None

    fake.blob = _blob_answer(data, first=200_000, then=cut)
    proxy = await mirror()
    d = Digest.of(data)
    path = f"/v2/lib/app/blobs/{d}"
    first, second = await asyncio.gather(proxy.get(path), proxy.get(path))
    ranged = asyncio.ensure_future(proxy.get(path, headers={"Range": "bytes=10-19"}))
    for resp in (first, second):
        assert resp.status == 200
        assert await resp.content.readexactly(100_000) == data[:100_000]
    await asyncio.sleep(0.1)
    go.set()
    for resp in (first, second):
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert url in await _error(await ranged)
    assert fake.count(f"GET /v2/lib/app/blobs/{d}") == 1  # one upstream GET for all three
    await _nothing_kept(proxy, d)
    fake.blob = _blob_answer(data)
    resp = await proxy.get(path)
    assert resp.status == 200 and await resp.read() == data
    assert fake.count(f"GET /v2/lib/app/blobs/{d}") == 2
    resp = await proxy.get(path, headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and await resp.read() == data[10:20]


# --- manifests ----------------------------------------------------------------------

@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_a_manifest_whose_digest_header_lies_is_not_kept(
    hostile: tuple[Hostile, str], mirror: Any, by: str
) -> None:
    fake, url = hostile
    body = _manifest(os.urandom(1000))
    lie = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()

    async def lying(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=OCI_MANIFEST,
                            headers={"Docker-Content-Digest": lie})

    fake.manifest = lying
    proxy = await mirror()
    reference = "v1" if by == "tag" else lie
    resp = await proxy.get(f"/v2/lib/app/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    message = await _error(resp)
    assert url in message and lie in message
    reg = proxy.server.app[REGISTRY]
    for digest in (Digest.of(body), Digest.parse(lie)):
        assert await reg.meta.get_manifest("lib/app", str(digest)) is None
        assert await reg.store.stat(digest) is None
    assert await reg.meta.resolve_tag("lib/app", "v1") is None


async def test_a_manifest_declaring_a_smaller_blob_is_served_as_the_upstream_has_it(
    hostile: tuple[Hostile, str], mirror: Any
) -> None:
    """A manifest may lie about a blob's size; the blob is what its digest says (as
    Distribution's proxy keeps it). The mirror serves both as they are: the client that
    reads the manifest is the one to refuse the mismatch (pybuild's does)."""
    fake, _ = hostile
    data = os.urandom(50_000)
    body = _manifest(data, declared=10_000)

    async def manifest(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=OCI_MANIFEST,
                            headers={"Docker-Content-Digest": str(Digest.of(body))})

    fake.manifest = manifest
    fake.blob = _blob_answer(data)
    proxy = await mirror()
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    assert resp.status == 200 and await resp.read() == body
    resp = await proxy.get(f"/v2/lib/app/blobs/{Digest.of(data)}")
    assert resp.status == 200 and await resp.read() == data


# --- auth ---------------------------------------------------------------------------

@pytest.mark.parametrize("realm_fails", ["500", "not-json", "no-token", "unreachable", "hangs"])
async def test_a_token_realm_that_fails_is_a_502_naming_it(
    hostile: tuple[Hostile, str], mirror: Any, aiohttp_server: Any,
    monkeypatch: pytest.MonkeyPatch, realm_fails: str,
) -> None:
    """Every request is answered 401 with a Bearer challenge whose realm fails: the
    mirror's client gets a spec-shaped 502 that names the upstream, soon, and nothing is
    stored; the mirror itself stays up."""
    monkeypatch.setattr("registry.server.proxy_upstream.UPSTREAM_READ_TIMEOUT", 1.0)
    fake, url = hostile
    forever = asyncio.Event()

    async def realm(request: web.Request) -> web.StreamResponse:
        if realm_fails == "500":
            return web.Response(status=500, text="token service down")
        if realm_fails == "not-json":
            return web.Response(text="<html>login</html>", content_type="text/html")
        if realm_fails == "hangs":
            await forever.wait()
        return web.json_response({"expires_in": 60})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", realm)
    token_server = await aiohttp_server(app)
    realm_url = (f"http://127.0.0.1:{token_server.port}/token" if realm_fails != "unreachable"
                 else "http://127.0.0.1:9/token")

    async def challenge(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm_url}",service="hostile"'})

    fake.base = fake.manifest = fake.blob = challenge
    proxy = await mirror()
    started = time.monotonic()
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": OCI_MANIFEST})
    message = await _error(resp)
    assert url in message, message
    resp = await proxy.get(f"/v2/lib/app/blobs/{Digest.of(b'x')}")
    assert url in await _error(resp)
    assert time.monotonic() - started < 30
    forever.set()
    assert (await proxy.get("/v2/")).status == 200
    reg = proxy.server.app[REGISTRY]
    assert await reg.meta.resolve_tag("lib/app", "v1") is None
