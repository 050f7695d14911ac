"""Transport policies: parallel Range parts, retries on 5xx only, progress output."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cas import Digest
from registry import oci
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.pull import TransferOptions
from registry.client.refs import parse_image_ref
from registry.client.remote import ClientOptions, RegistryClient
from registry.errors import RegistryError

from .helpers import simple_image, store_image


async def test_large_blobs_come_in_parallel_range_parts(
    distribution: str, make_proxy: Any, images: ImageStore, images2: ImageStore,
    client: RegistryClient,
) -> None:
    image = simple_image(70, (600_000,))
    ref = f"{distribution}/transport/parts:v1"
    await store_image(images, ref, image)
    await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images, client,
                     Progress("quiet"), CopyOptions())
    proxy, host = await make_proxy(distribution)
    options = CopyOptions(transfer=TransferOptions(part_size=100_000, parallel_threshold=200_000))
    result = await copy_image(parse_endpoint(f"{host}/transport/parts:v1"),
                              parse_endpoint(f"local:{host}/transport/parts:v1"), images2, client,
                              Progress("quiet"), options)
    assert result.digest == image.digest
    layer = max(image.layers, key=len)
    ranges = sorted(r for m, p, r in proxy.log if m == "GET" and "/blobs/" in p and r)
    assert len(ranges) == -(-len(layer) // 100_000)
    assert "bytes=0-99999" in ranges
    assert proxy.blob_bytes == len(layer) + len(image.config)


@pytest.mark.parametrize(("status", "attempts"), [(503, 3), (500, 3), (404, 1), (400, 1)])
async def test_retries_on_5xx_never_on_4xx(status: int, attempts: int, aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        body = {"errors": [{"code": "UNKNOWN" if status >= 500 else "MANIFEST_UNKNOWN",
                            "message": "nope"}]}
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    ref = parse_image_ref(f"127.0.0.1:{server.port}/a/b:1")
    async with RegistryClient(ClientOptions(retries=2, backoff=0.001)) as client:
        await client.base_url(ref.host)
        seen.clear()
        with pytest.raises(RegistryError) as err:
            await client.get_manifest(ref)
    assert err.value.status == status
    assert len(seen) == attempts


async def test_every_error_of_an_answer_is_said_with_its_detail(aiohttp_server: Any) -> None:
    # Distribution answers a manifest naming a blob it lacks (a foreign layer's) with
    # UNKNOWN first and MANIFEST_BLOB_UNKNOWN (the blob in its detail) after: only the
    # first, "UNKNOWN: unknown error", was shown.
    blob = "sha256:" + "ab" * 32

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"errors": [
            {"code": "UNKNOWN", "message": "unknown error"},
            {"code": "UNKNOWN", "message": "unknown error", "detail": {}},
            {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": blob},
        ]}, status=400)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    ref = parse_image_ref(f"127.0.0.1:{server.port}/a/b:1")
    async with RegistryClient(ClientOptions(retries=0)) as client:
        with pytest.raises(RegistryError) as err:
            await client.put_manifest(ref, b"{}", "application/vnd.oci.image.manifest.v1+json")
    assert str(err.value) == (f"PUT http://{ref.host}/v2/a/b/manifests/1: HTTP 400 UNKNOWN: unknown error; "
                              f"UNKNOWN: unknown error; MANIFEST_BLOB_UNKNOWN: blob unknown to registry ({blob})")
    assert err.value.code.code == "UNKNOWN" and err.value.others[1].detail == blob


def test_progress_modes() -> None:
    out = io.StringIO()
    p = Progress("json", out)
    p.start("sha256:aa", "aa", 100)
    p.advance("sha256:aa", 60, reused=True)
    p.advance("sha256:aa", 40)
    p.finish("sha256:aa", "pulled")
    summary = p.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert next(e["event"] for e in events) == "start" and events[-1]["event"] == "summary"
    done = next(e for e in events if e["event"] == "done")
    assert done == {"event": "done", "id": "sha256:aa", "status": "pulled", "bytes": 100,
                    "reused": 60, "total": 100}
    assert summary["transferred"] == 40 and summary["reused"] == 60

    out = io.StringIO()
    p = Progress("plain", out)
    p.start("k", "layer", 2048)
    p.advance("k", 2048)
    p.finish("k", "pulled")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "layer: start (2.0 KiB)"
    assert lines[1] == "layer: pulled (2.0 KiB transferred)"
    assert lines[2].startswith("2.0 KiB transferred, 0 B reused")

    out = io.StringIO()
    p = Progress("tty", out)
    p.start("k", "layer", 100)
    p.finish("k", "pulled")
    assert "[" in out.getvalue() and "total:" in out.getvalue()
    with pytest.raises(ValueError, match="progress mode"):
        Progress("fancy")




async def test_requests_after_a_tls_probe_that_connected_go_side_by_side(aiohttp_server: Any) -> None:
    """A loopback registry that speaks plain HTTP: the TLS probe fails after connecting, so
    the host is up and the first requests after it need not go one at a time (each would
    cost a round trip more)."""
    both = asyncio.Event()
    waiting = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal waiting
        if request.path == "/v2/":
            return web.json_response({})
        waiting += 1
        if waiting == 2:
            both.set()
        try:
            await asyncio.wait_for(both.wait(), 5)
        except TimeoutError:
            return web.json_response({"errors": [{"code": "UNKNOWN", "message": "alone"}]},
                                     status=400)
        return web.json_response({"tags": ["1"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = await aiohttp_server(app)
    host = f"127.0.0.1:{server.port}"
    async with RegistryClient(ClientOptions(retries=0)) as client:
        assert await client.base_url(host) == f"http://{host}"
        found = await asyncio.gather(client.tags(host, "a/b"), client.tags(host, "a/c"))
    assert found == [["1"], ["1"]]


async def test_referrers_that_come_in_pages_are_read_to_the_last(pybuild_registry: str) -> None:
    # Four referrers of ~1.5 MiB of annotations each do not fit one index: the registry
    # sends two pages, linked by Link, and the client returns them all.
    host = pybuild_registry
    empty = {"mediaType": oci.OCI_EMPTY, "digest": str(oci.EMPTY_JSON_DIGEST), "size": 2}
    subject = {"mediaType": oci.OCI_MANIFEST, "digest": str(Digest.of(b"subject")), "size": 7}
    pushed = []
    async with aiohttp.ClientSession(f"http://{host}") as http:
        async with http.post("/v2/art/blobs/uploads/") as resp:
            location = resp.headers["Location"]
        async with http.put(f"{location}?digest={oci.EMPTY_JSON_DIGEST}", data=oci.EMPTY_JSON) as resp:
            assert resp.status == 201
        for i in range(4):
            body = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": empty,
                               "layers": [empty], "subject": subject,
                               "annotations": {"i": str(i), "pad": "x" * (1500 << 10)}}).encode()
            async with http.put(f"/v2/art/manifests/{Digest.of(body)}", data=io.BytesIO(body),
                                headers={"Content-Type": oci.OCI_MANIFEST}) as resp:
                assert resp.status == 201, await resp.text()
            pushed.append(Digest.of(body))
        async with http.get(f"/v2/art/referrers/{subject['digest']}") as resp:
            assert "Link" in resp.headers
    async with RegistryClient(ClientOptions(insecure=frozenset({host}))) as client:
        index = await client.referrers(host, "art", Digest.parse(subject["digest"]))
    assert [m.digest for m in index.manifests] == pushed
