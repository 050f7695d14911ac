"""The pull-through cache (``proxy``), in process: a real pybuild registry as the
upstream (its requests counted), a second one configured to mirror it."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from cas import Digest
from cas.holders import repository_holder
from registry.server import ConfigError, ServerConfig, load_config, make_app
from registry.server.proxy import PROXY
from registry.server.proxy_config import parse_duration, parse_upstreams
from registry.server.state import REGISTRY

from .helpers import error_codes, push_docker_list, push_image

MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


class Upstream:
    """A pybuild registry on a loopback port that counts the requests it gets."""

    def __init__(self, server: Any, client: Any, counts: Counter[str],
                 answering: asyncio.Event) -> None:
        self.server = server
        self.client = client  # for pushing to it
        self.counts = counts
        self.answering = answering  # cleared: manifest GETs and HEADs hang until set

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def gets(self, path_end: str) -> int:
        return sum(n for k, n in self.counts.items() if k.startswith("GET ") and
                   k.endswith(path_end))


@pytest.fixture
async def upstream(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path) -> Upstream:
    counts: Counter[str] = Counter()
    answering = asyncio.Event()
    answering.set()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        counts[f"{request.method} {request.path}"] += 1
        if request.method in ("GET", "HEAD") and "/manifests/" in request.path:
            await answering.wait()
        return await handler(request)

    app = make_app(ServerConfig(log_access=False), storage=tmp_path / "upstream")
    app.middlewares.append(count)
    server = await aiohttp_server(app)
    return Upstream(server, await aiohttp_client(server), counts, answering)


@pytest.fixture
def mirror(aiohttp_client: Any, tmp_path: Path, upstream: Upstream) -> Any:
    async def make(**overrides: Any) -> Any:
        settings: dict[str, Any] = {"proxy_remoteurl": upstream.url, **overrides}
        config = dataclasses.replace(ServerConfig(log_access=False), **settings)
        return await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))

    return make


def _layers() -> list[bytes]:
    return [os.urandom(300_000), os.urandom(70_000)]


async def _get(client: Any, path: str) -> tuple[int, bytes, Any]:
    resp = await client.get(path, headers={"Accept": MANIFEST_ACCEPT})
    return resp.status, await resp.read(), resp.headers


async def test_pull_through_stores_and_serves(upstream: Upstream, mirror: Any) -> None:
    layers = _layers()
    digest, body = await push_image(upstream.client, "lib/app", "v1", layers)
    proxy = await mirror()
    status, got, headers = await _get(proxy, "/v2/lib/app/manifests/v1")
    assert status == 200, got
    assert got == body
    assert headers["Docker-Content-Digest"] == str(digest)
    head = await proxy.head("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert head.status == 200
    for layer in layers:
        d = Digest.of(layer)
        status, got, _ = await _get(proxy, f"/v2/lib/app/blobs/{d}")
        assert status == 200
        assert got == layer
        # Served from the store from now on.
        status, got, _ = await _get(proxy, f"/v2/lib/app/blobs/{d}")
        assert (status, got == layer) == (200, True)
        assert upstream.gets(f"/blobs/{d}") == 1
    config_digest = json.loads(body)["config"]["digest"]
    assert (await _get(proxy, f"/v2/lib/app/blobs/{config_digest}"))[0] == 200
    # By digest, from the store: the upstream is not asked for it.
    before = upstream.gets(f"/manifests/{digest}")
    assert (await _get(proxy, f"/v2/lib/app/manifests/{digest}"))[0] == 200
    assert upstream.gets(f"/manifests/{digest}") == before
    # The mirror lists what it holds.
    resp = await proxy.get("/v2/lib/app/tags/list")
    assert (await resp.json())["tags"] == ["v1"]


async def test_tag_list_through_the_mirror_is_the_upstreams(
    upstream: Upstream, mirror: Any
) -> None:
    # As Distribution's proxy: what can be pulled through it, cached or not.
    for tag in ("v2", "v1", "latest"):
        await push_image(upstream.client, "lib/app", tag, [b"layer"])
    proxy = await mirror(proxy_ttl=0.0)
    resp = await proxy.get("/v2/lib/app/tags/list")
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"name": "lib/app", "tags": ["latest", "v1", "v2"]}
    resp = await proxy.get("/v2/lib/app/tags/list?n=1&last=latest")
    assert (await resp.json())["tags"] == ["v1"]
    assert resp.headers["Link"] == '</v2/lib/app/tags/list?n=1&last=v1>; rel="next"'
    assert (await _get(proxy, "/v2/lib/app/manifests/v1"))[0] == 200
    # The upstream down: the tags the mirror holds; nothing held: NAME_UNKNOWN.
    await upstream.client.close()
    await upstream.server.close()
    resp = await proxy.get("/v2/lib/app/tags/list")
    assert (await resp.json())["tags"] == ["v1"]
    resp = await proxy.get("/v2/lib/other/tags/list")
    assert resp.status == 404
    assert await error_codes(resp) == ["NAME_UNKNOWN"]


async def test_tag_list_of_a_mixed_registry_adds_the_tags_pushed_to_it(
    upstream: Upstream, mirror: Any
) -> None:
    await push_image(upstream.client, "lib/app", "v1", [b"upstream"])
    proxy = await mirror(proxy_mixed=True)
    await push_image(proxy, "lib/app", "local", [b"local"])
    resp = await proxy.get("/v2/lib/app/tags/list")
    assert (await resp.json())["tags"] == ["local", "v1"]


async def test_a_list_by_tag_to_a_client_without_lists_is_fetched_as_its_linux_amd64_manifest(
    upstream: Upstream, mirror: Any
) -> None:
    # The mirror holds only the list when the client asks; the manifest it serves in the
    # list's place comes from upstream first, as Distribution's proxy fetches it.
    _, children = await push_docker_list(upstream.client, "lib/multi", "v1", ["linux/arm64", "linux/amd64"])
    proxy = await mirror()
    resp = await proxy.get("/v2/lib/multi/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == str(children["linux/amd64"])
    assert upstream.gets(f"/manifests/{children['linux/amd64']}") == 1


async def test_unknown_upstream_content_is_a_404(upstream: Upstream, mirror: Any) -> None:
    proxy = await mirror()
    resp = await proxy.get("/v2/lib/none/manifests/v1")
    assert resp.status == 404
    assert await error_codes(resp) == ["MANIFEST_UNKNOWN"]
    missing = Digest.of(b"not there")
    resp = await proxy.get(f"/v2/lib/none/blobs/{missing}")
    assert resp.status == 404
    assert await error_codes(resp) == ["BLOB_UNKNOWN"]


async def test_concurrent_pulls_fetch_each_blob_once(upstream: Upstream, mirror: Any) -> None:
    layers = _layers()
    _, body = await push_image(upstream.client, "lib/app", "v1", layers)
    proxy = await mirror(proxy_ttl=3600.0)
    config_digest = json.loads(body)["config"]["digest"]
    blob_paths = [f"/v2/lib/app/blobs/{Digest.of(x)}" for x in layers]
    blob_paths.append(f"/v2/lib/app/blobs/{config_digest}")

    async def pull() -> list[tuple[int, bytes]]:
        status, got, _ = await _get(proxy, "/v2/lib/app/manifests/v1")
        out = [(status, got)]
        results = await asyncio.gather(*(_get(proxy, p) for p in blob_paths))
        return out + [(s, b) for s, b, _ in results]

    pulls = await asyncio.gather(*(pull() for _ in range(20)))
    for result in pulls:
        assert result[0] == (200, body)
        assert [b for _, b in result[1:3]] == layers
        assert all(s == 200 for s, _ in result)
    for path in blob_paths:
        assert upstream.gets(path.removeprefix("/v2/lib/app")) == 1, upstream.counts
    assert upstream.gets("/manifests/v1") == 1, upstream.counts


async def test_a_blob_flight_that_ends_while_a_request_checks_the_store_is_not_run_again(
    upstream: Upstream, mirror: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interleaving 20 concurrent pulls can meet: request B asks the store, sees no
    # blob, and only gets its answer after request A's flight has committed, ended and
    # been forgotten. B must then find the blob in the store, not fetch it again.
    layers = _layers()
    await push_image(upstream.client, "lib/app", "v1", layers)
    client = await mirror()
    reg, proxy = client.server.app[REGISTRY], client.server.app[PROXY]
    digest = Digest.of(layers[1])
    path = f"/v2/lib/app/blobs/{digest}"
    route = proxy.route(make_mocked_request("GET", path), "lib/app")
    real_is_linked, real_stat = reg.store.is_linked, reg.store.stat
    first_done = asyncio.Event()
    stale = {"is_linked", "stat"}  # B's first look at each: before A's commit
    b_task: asyncio.Task[Any] | None = None

    async def is_linked(holder: str, d: Digest) -> bool:
        if asyncio.current_task() is b_task and "is_linked" in stale:
            stale.discard("is_linked")
            return False
        return bool(await real_is_linked(holder, d))

    async def stat(d: Digest) -> Any:
        if asyncio.current_task() is b_task and "stat" in stale:
            stale.discard("stat")
            await first_done.wait()
            return None
        return await real_stat(d)

    started: list[asyncio.Task[Any]] = []
    real_start = proxy._start

    def start(key: tuple[str, ...], make: Any) -> asyncio.Task[Any]:
        task = real_start(key, make)
        started.append(task)
        return task

    monkeypatch.setattr(reg.store, "is_linked", is_linked)
    monkeypatch.setattr(reg.store, "stat", stat)
    monkeypatch.setattr(proxy, "_start", start)
    b_task = asyncio.create_task(proxy.blob_flight(reg, route, digest))
    await asyncio.sleep(0)
    status, got, _ = await _get(client, path)  # request A: fetches, stores, serves
    assert (status, got == layers[1]) == (200, True)
    assert len(started) == 1
    await started[0]  # ended, and forgotten (its done callbacks ran before this wakes)
    assert not proxy._flights and not proxy._blob_flights
    first_done.set()
    transfer = await b_task
    assert not stale  # B did see the stale answers
    if transfer is not None:
        await transfer[0]
    assert transfer is None
    assert upstream.gets(f"/blobs/{digest}") == 1, upstream.counts


async def test_upstream_down_cached_content_still_served(
    upstream: Upstream, mirror: Any
) -> None:
    layers = _layers()
    digest, body = await push_image(upstream.client, "lib/app", "v1", layers)
    proxy = await mirror(proxy_ttl=0.0)  # every tag GET asks upstream
    assert (await _get(proxy, "/v2/lib/app/manifests/v1"))[0] == 200
    for layer in layers:
        assert (await _get(proxy, f"/v2/lib/app/blobs/{Digest.of(layer)}"))[0] == 200
    url = upstream.url
    await upstream.client.close()
    await upstream.server.close()
    status, got, _ = await _get(proxy, "/v2/lib/app/manifests/v1")
    assert (status, got) == (200, body)
    assert (await _get(proxy, f"/v2/lib/app/manifests/{digest}"))[1] == body
    for layer in layers:
        assert (await _get(proxy, f"/v2/lib/app/blobs/{Digest.of(layer)}"))[1] == layer
    # Also by a registry started afterwards on the same storage (nothing in memory).
    restarted = await mirror(proxy_ttl=0.0, proxy_remoteurl=url)
    assert (await _get(restarted, "/v2/lib/app/manifests/v1"))[:2] == (200, body)
    for layer in layers:
        assert (await _get(restarted, f"/v2/lib/app/blobs/{Digest.of(layer)}"))[1] == layer
    # What was never cached says which upstream failed.
    resp = await proxy.get("/v2/lib/other/manifests/v1")
    assert resp.status == 502
    doc = await resp.json()
    assert doc["errors"][0]["code"] == "UNAVAILABLE"
    assert url in doc["errors"][0]["message"]


async def test_a_hung_upstream_delays_a_cached_tag_only_briefly(
    upstream: Upstream, mirror: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that accepts the connection and then says nothing (a stopped process,
    a network that drops packets) would hold every pull of a cached tag for minutes."""
    monkeypatch.setattr("registry.server.proxy._STALE_AFTER", 0.2)
    first, body = await push_image(upstream.client, "lib/app", "v1", [b"one"])
    proxy = await mirror(proxy_ttl=0.5)
    assert (await _get(proxy, "/v2/lib/app/manifests/v1"))[1] == body
    await asyncio.sleep(0.6)  # past the ttl: the next pull asks the upstream
    upstream.answering.clear()
    # The upstream hangs (a generous bound makes a regression fail, not hang the suite).
    pulls = await asyncio.wait_for(
        asyncio.gather(*(_get(proxy, "/v2/lib/app/manifests/v1") for _ in range(5))), 30)
    assert all((s, b) == (200, body) for s, b, _ in pulls)
    # What is not cached has nothing else to serve: it waits for the upstream.
    other, other_body = await push_image(upstream.client, "lib/other", "v1", [b"other"])
    waiting = asyncio.ensure_future(_get(proxy, "/v2/lib/other/manifests/v1"))
    # The tag moves upstream meanwhile; the check under way sees it once it is answered.
    second, _ = await push_image(upstream.client, "lib/app", "v1", [b"two"])
    upstream.answering.set()
    assert (await asyncio.wait_for(waiting, 30))[1] == other_body
    checks = list(proxy.server.app[PROXY]._flights.values())
    if checks:
        await asyncio.wait(checks)  # the check that was under way ends
    asked = upstream.gets("/lib/app/manifests/v1")
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.headers["Docker-Content-Digest"] == str(second)
    assert upstream.gets("/lib/app/manifests/v1") == asked  # within the ttl of that check
    assert (await _get(proxy, f"/v2/lib/app/blobs/{Digest.of(b'two')}"))[1] == b"two"
    assert other != first


async def test_changed_tag_seen_after_ttl_not_before(upstream: Upstream, mirror: Any) -> None:
    first, _ = await push_image(upstream.client, "lib/app", "v1", [b"one"])
    proxy = await mirror(proxy_ttl=1.5)
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.headers["Docker-Content-Digest"] == str(first)
    second, _ = await push_image(upstream.client, "lib/app", "v1", [b"two"])
    assert second != first
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.headers["Docker-Content-Digest"] == str(first)
    await asyncio.sleep(1.6)
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.headers["Docker-Content-Digest"] == str(second)
    assert (await _get(proxy, f"/v2/lib/app/blobs/{Digest.of(b'two')}"))[1] == b"two"


async def test_push_to_a_proxy_is_refused_and_changes_nothing(
    upstream: Upstream, mirror: Any
) -> None:
    digest, _ = await push_image(upstream.client, "lib/app", "v1", [b"layer"])
    proxy = await mirror()
    assert (await _get(proxy, "/v2/lib/app/manifests/v1"))[0] == 200
    attempts = [
        proxy.post("/v2/lib/app/blobs/uploads/"),
        proxy.post(f"/v2/lib/new/blobs/uploads/?digest={Digest.of(b'x')}", data=b"x"),
        proxy.put("/v2/lib/app/manifests/v2", data=b"{}",
                  headers={"Content-Type": MANIFEST_ACCEPT}),
        proxy.delete(f"/v2/lib/app/manifests/{digest}"),
        proxy.delete("/v2/lib/app/manifests/v1"),
    ]
    for attempt in attempts:
        resp = await attempt
        assert resp.status == 405
        assert await error_codes(resp) == ["UNSUPPORTED"]
    resp = await proxy.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == ["lib/app"]
    resp = await proxy.get("/v2/lib/app/tags/list")
    assert (await resp.json())["tags"] == ["v1"]


async def test_mixed_registry_accepts_pushes_and_keeps_them(
    upstream: Upstream, mirror: Any
) -> None:
    await push_image(upstream.client, "lib/app", "v1", [b"upstream"])
    proxy = await mirror(proxy_mixed=True, proxy_ttl=0.0)
    local, _ = await push_image(proxy, "lib/app", "v1", [b"local"])
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.headers["Docker-Content-Digest"] == str(local)
    assert upstream.gets("/manifests/v1") == 0


async def test_ns_and_host_prefix_choose_the_upstream(
    upstream: Upstream, aiohttp_client: Any, tmp_path: Path
) -> None:
    _, body = await push_image(upstream.client, "org/app", "v1", [b"layer"])
    config = dataclasses.replace(
        ServerConfig(log_access=False),
        proxy_upstreams=parse_upstreams([
            {"host": "127.0.0.1:9", "remoteurl": "http://127.0.0.1:9"},
            {"host": "mirror.test", "remoteurl": upstream.url},
        ]),
    )
    proxy = await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))
    status, got, _ = await _get(proxy, "/v2/org/app/manifests/v1?ns=mirror.test")
    assert (status, got) == (200, body)
    # Kept as <host>/<name>, where the host-prefixed form finds it too.
    status, got, _ = await _get(proxy, "/v2/mirror.test/org/app/manifests/v1")
    assert (status, got) == (200, body)
    layer = Digest.of(b"layer")
    assert (await _get(proxy, f"/v2/mirror.test/org/app/blobs/{layer}"))[1] == b"layer"
    assert upstream.gets(f"/blobs/{layer}") == 1
    resp = await proxy.get("/v2/org/app/manifests/v1?ns=elsewhere.io")
    assert resp.status == 400
    assert await error_codes(resp) == ["NAME_INVALID"]
    # No upstream for plain names: local content only.
    resp = await proxy.get("/v2/org/app/manifests/v1")
    assert resp.status == 404


async def test_recipes_through_the_mirror_are_of_the_blob_kept_for_the_upstream(
    upstream: Upstream, aiohttp_client: Any, tmp_path: Path
) -> None:
    # pybuild's client asks a mirror for a blob's recipe before its bytes: by the name it
    # pulls (host-prefixed, or with ?ns=), of a blob the mirror may not have fetched yet.
    layers = [os.urandom(300_000), os.urandom(200_000), os.urandom(100_000)]
    await push_image(upstream.client, "org/app", "v1", layers)
    config = dataclasses.replace(
        ServerConfig(log_access=False),
        proxy_upstreams=parse_upstreams([{"host": "mirror.test", "remoteurl": upstream.url}]),
        proxy_remoteurl=upstream.url,
    )
    proxy = await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))
    store = proxy.server.app[REGISTRY].store
    paths = [f"/v2/mirror.test/org/app/_pybuild/blob/recipe?digest={Digest.of(layers[0])}",
             f"/v2/org/app/_pybuild/blob/recipe?digest={Digest.of(layers[1])}&ns=mirror.test",
             f"/v2/org/app/_pybuild/blob/recipe?digest={Digest.of(layers[2])}"]
    locals_ = ["mirror.test/org/app", "mirror.test/org/app", "org/app"]
    for layer, path, local in zip(layers, paths, locals_, strict=True):
        d = Digest.of(layer)
        resp = await proxy.get(path)
        assert resp.status == 200, await resp.text()
        recipe = await resp.json()
        assert recipe["digest"] == str(d) and recipe["size"] == len(layer)
        expected = await store.recipe(d)
        assert [p["key"] for p in recipe["pieces"]] == [p.key for p in expected.pieces]
        assert await store.is_linked(repository_holder(local), d)
        # fetched once from upstream, by the recipe request: the Range GETs that follow
        # are served from the store
        part = await proxy.get(f"/v2/{local}/blobs/{d}", headers={"Range": "bytes=0-9"})
        assert part.status == 206 and await part.read() == layer[:10]
        assert upstream.gets(f"/blobs/{d}") == 1
    # A blob the upstream does not have has no recipe.
    missing = Digest.of(b"nowhere")
    resp = await proxy.get(f"/v2/mirror.test/org/app/_pybuild/blob/recipe?digest={missing}")
    assert resp.status == 404 and await error_codes(resp) == ["BLOB_UNKNOWN"]


async def test_ns_names_the_remoteurl_upstream_by_its_host(
    upstream: Upstream, aiohttp_client: Any, tmp_path: Path
) -> None:
    _, body = await push_image(upstream.client, "org/app", "v1", [b"layer"])
    netloc = upstream.url.removeprefix("http://")
    config = dataclasses.replace(
        ServerConfig(log_access=False), proxy_remoteurl=upstream.url,
        proxy_upstreams=parse_upstreams([{"host": "other.io", "remoteurl": "http://127.0.0.1:9"}]),
    )
    proxy = await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))
    status, got, _ = await _get(proxy, f"/v2/org/app/manifests/v1?ns={netloc}")
    assert (status, got) == (200, body)
    assert (await _get(proxy, "/v2/org/app/manifests/v1"))[1] == body
    resp = await proxy.get("/v2/org/app/manifests/v1?ns=quay.io")
    assert resp.status == 400
    assert "other.io" in (await resp.json())["errors"][0]["message"]


class SlowUpstream:
    """A fake upstream serving one blob: ``first`` bytes at once, the rest (or, when
    ``lie``, other bytes of the same length) once ``go`` is set."""

    def __init__(self, data: bytes, first: int, *, lie: bool = False) -> None:
        self.data = data
        self.first = first
        self.lie = lie
        self.go = asyncio.Event()
        self.gets = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/":
            return web.json_response({})
        self.gets += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(self.data)
        await resp.prepare(request)
        await resp.write(self.data[: self.first])
        await self.go.wait()
        rest = self.data[self.first :]
        await resp.write(bytes(len(rest)) if self.lie else rest)
        await resp.write_eof()
        return resp


async def _mirror_of(aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path,
                     fake: SlowUpstream) -> Any:
    app = web.Application()
    app.router.add_get("/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    config = dataclasses.replace(ServerConfig(log_access=False),
                                 proxy_remoteurl=f"http://127.0.0.1:{server.port}")
    return await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))


async def test_blob_streams_to_clients_while_it_is_stored(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    data = os.urandom(3 << 20)
    fake = SlowUpstream(data, 1 << 20)
    proxy = await _mirror_of(aiohttp_server, aiohttp_client, tmp_path, fake)
    d = Digest.of(data)
    clients = [await proxy.get(f"/v2/lib/app/blobs/{d}") for _ in range(3)]
    for resp in clients:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == str(d)
        # The upstream has sent only its first MiB: the clients already have it.
        assert await asyncio.wait_for(resp.content.readexactly(1 << 20), 10) == data[: 1 << 20]
    # A Range request waits for the verified store.
    pending = asyncio.ensure_future(
        proxy.get(f"/v2/lib/app/blobs/{d}", headers={"Range": "bytes=0-9"}))
    await asyncio.sleep(0.2)
    assert not pending.done()
    fake.go.set()
    for resp in clients:
        assert await resp.content.read() == data[1 << 20 :]
    late = await pending
    assert late.status == 206
    assert await late.read() == data[:10]
    assert (await _get(proxy, f"/v2/lib/app/blobs/{d}"))[1] == data
    assert fake.gets == 1


async def test_blob_that_does_not_match_its_digest_is_not_kept(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    fake = SlowUpstream(data, 50_000, lie=True)
    proxy = await _mirror_of(aiohttp_server, aiohttp_client, tmp_path, fake)
    d = Digest.of(data)
    streaming = await proxy.get(f"/v2/lib/app/blobs/{d}")
    assert streaming.status == 200
    waiting = asyncio.ensure_future(proxy.head(f"/v2/lib/app/blobs/{d}"))
    await asyncio.sleep(0.2)
    fake.go.set()
    # The client streaming it never gets the whole (wrong) body ...
    with pytest.raises(aiohttp.ClientPayloadError):
        await streaming.read()
    # ... one waiting for the store is told why, and nothing was kept.
    resp = await waiting
    assert resp.status == 502
    resp = await proxy.get(f"/v2/lib/app/blobs/{d}", headers={"Range": "bytes=0-1"})
    assert resp.status == 502
    doc = await resp.json()
    assert doc["errors"][0]["code"] == "UNAVAILABLE"
    assert "not kept" in doc["errors"][0]["message"]
    assert fake.gets == 2


def test_proxy_configuration(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(
        "proxy:\n"
        "  remoteurl: https://registry-1.docker.io/\n"
        "  username: alice\n"
        "  password: secret\n"
        "  ttl: 1h30m\n"
        "  upstreams:\n"
        "    - {host: ghcr.io, remoteurl: 'https://ghcr.io', ttl: 10s}\n"
    )
    config = load_config(file, environ={})
    assert config.proxy_remoteurl == "https://registry-1.docker.io/"
    assert config.proxy_ttl == 5400.0
    assert config.proxy_upstreams[0].host == "ghcr.io"
    assert config.proxy_upstreams[0].ttl == 10.0
    assert "secret" not in repr(config)
    config = load_config(file, environ={"PYBUILD_PROXY_TTL": "168h", "PYBUILD_PROXY_MIXED": "1"})
    assert (config.proxy_ttl, config.proxy_mixed) == (168 * 3600.0, True)
    assert parse_duration(30) == 30.0
    assert parse_duration("1.5s") == 1.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("proxy: {ttl: soon}", "duration"),
        ("proxy: {ttl: -5}", "zero or more"),
        ("proxy: {remoteurl: registry-1.docker.io}", "http(s)://host"),
        ("proxy: {remoteurl: 'http://mirror:port'}", "http(s)://host[:port]"),
        ("proxy: {remoteurl: 'http://mirror:99999'}", "http(s)://host[:port]"),
        ("proxy: {remoteurl: 'http://:5000'}", "http(s)://host[:port]"),
        ("proxy: {upstreams: [{host: a.io, remoteurl: 'http://a:0'}]}", "http(s)://host[:port]"),
        ("proxy: {upstreams: [{host: a.io}]}", "host and remoteurl are required"),
        ("proxy: {upstreams: [{host: a.io, remoteurl: 'http://a', colour: red}]}", "colour"),
        ("proxy: {upstreams: [{host: a.io, remoteurl: 'http://a'}, "
         "{host: A.io, remoteurl: 'http://b'}]}", "twice"),
        ("proxy: {upstreams: {host: a.io}}", "list"),
        ("proxy: {upstreams: [{host: 'a b', remoteurl: 'http://a'}]}", "host name"),
    ],
)
def test_bad_proxy_configuration_is_named(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "config.yaml"
    file.write_text(text + "\n")
    with pytest.raises(ConfigError, match="proxy") as info:
        load_config(file, environ={})
    assert message in str(info.value)



def _alice_only(tmp_path: Path, storage: str) -> Any:
    """An upstream registry (app) that only the user alice, password s3cret, may use."""
    htpasswd = tmp_path / "htpasswd"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    return make_app(ServerConfig(log_access=False, auth_htpasswd=htpasswd), storage=tmp_path / storage)


async def test_upstream_credentials_from_the_configuration(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    server = await aiohttp_server(_alice_only(tmp_path, "upstream"))
    token = base64.b64encode(b"alice:s3cret").decode()
    pusher = await aiohttp_client(server, headers={"Authorization": f"Basic {token}"})
    _, body = await push_image(pusher, "lib/app", "v1", [b"private layer"])
    url = f"http://127.0.0.1:{server.port}"

    async def mirror_with(password: str, where: str) -> Any:
        config = dataclasses.replace(
            ServerConfig(log_access=False), proxy_remoteurl=url, proxy_username="alice",
            proxy_password=password)
        return await aiohttp_client(make_app(config, storage=tmp_path / where))

    proxy = await mirror_with("s3cret", "good")
    assert (await _get(proxy, "/v2/lib/app/manifests/v1"))[1] == body
    layer = Digest.of(b"private layer")
    assert (await _get(proxy, f"/v2/lib/app/blobs/{layer}"))[1] == b"private layer"
    proxy = await mirror_with("wrong", "bad")
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 502
    message = (await resp.json())["errors"][0]["message"]
    assert url in message
    assert "wrong" not in message
    # The fix is in the mirror's configuration, not in a `pybuild login` on its machine.
    assert "proxy.username and proxy.password" in message
    assert "pybuild login" not in message


async def test_the_mirror_uses_only_the_credentials_of_its_configuration(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Logins of the account the server runs as (environment, Docker config) are not the
    # mirror's: with them, anyone pulling through it would read what that account may.
    server = await aiohttp_server(_alice_only(tmp_path, "up"))
    host = f"127.0.0.1:{server.port}"
    token = base64.b64encode(b"alice:s3cret").decode()
    pusher = await aiohttp_client(server, headers={"Authorization": f"Basic {token}"})
    await push_image(pusher, "lib/private", "v1", [b"private layer"])
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    for env in (False, True):
        if env:
            monkeypatch.setenv("PYBUILD_REGISTRY_USER", "alice")
            monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "s3cret")
        config = dataclasses.replace(ServerConfig(log_access=False), proxy_remoteurl=f"http://{host}")
        proxy = await aiohttp_client(make_app(config, storage=tmp_path / f"mirror{env}"))
        resp = await proxy.get("/v2/lib/private/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status == 502
        message = (await resp.json())["errors"][0]["message"]
        assert "without credentials: set proxy.username and proxy.password" in message
        assert "pybuild login" not in message


async def test_wrong_credentials_of_an_upstream_by_host_name_its_entry(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    server = await aiohttp_server(_alice_only(tmp_path, "up"))
    upstreams = parse_upstreams([{"host": "team.example", "username": "alice",
                                  "password": "wrong",
                                  "remoteurl": f"http://127.0.0.1:{server.port}"}])
    config = dataclasses.replace(ServerConfig(log_access=False), proxy_upstreams=upstreams)
    proxy = await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))
    resp = await proxy.get("/v2/team.example/lib/app/manifests/v1")
    assert resp.status == 502
    message = (await resp.json())["errors"][0]["message"]
    assert "upstream team.example in proxy.upstreams" in message
    assert "pybuild login" not in message


async def test_mirrored_images_share_blobs_and_pieces(upstream: Upstream, mirror: Any) -> None:
    base = os.urandom(4 << 20)
    grown = base + os.urandom(100_000)  # the same bytes, and some more
    await push_image(upstream.client, "lib/a", "v1", [base])
    await push_image(upstream.client, "lib/b", "v1", [base, grown])
    proxy = await mirror()
    store = proxy.server.app[REGISTRY].store
    assert (await _get(proxy, f"/v2/lib/a/blobs/{Digest.of(base)}"))[1] == base
    before = await store.stats()
    # The blob another repository holds is linked, not fetched again.
    assert (await _get(proxy, f"/v2/lib/b/blobs/{Digest.of(base)}"))[1] == base
    assert upstream.gets(f"/v2/lib/b/blobs/{Digest.of(base)}") == 0
    # A new blob that shares most of its bytes costs about its difference.
    assert (await _get(proxy, f"/v2/lib/b/blobs/{Digest.of(grown)}"))[1] == grown
    after = await store.stats()
    assert after.logical_bytes - before.logical_bytes == len(grown)
    assert after.physical_bytes - before.physical_bytes < len(grown) // 2


async def test_an_upstream_back_up_is_used_again(
    upstream: Upstream, mirror: Any, aiohttp_server: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("registry.server.proxy._DOWN_SECONDS", 0.3)
    _, body = await push_image(upstream.client, "lib/app", "v1", [b"layer"])
    proxy = await mirror(proxy_ttl=0.0)
    port = upstream.server.port
    await upstream.client.close()
    await upstream.server.close()
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 502
    # Within the pause the upstream is not tried again: the answer is immediate.
    resp = await proxy.get("/v2/lib/app/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert "moments ago" in (await resp.json())["errors"][0]["message"]
    await asyncio.sleep(0.4)
    again = make_app(ServerConfig(log_access=False), storage=tmp_path / "upstream")
    await aiohttp_server(again, port=port)
    status, got, _ = await _get(proxy, "/v2/lib/app/manifests/v1")
    assert (status, got) == (200, body)


async def test_an_upstream_answering_nonsense_is_a_502(
    aiohttp_server: Any, aiohttp_client: Any, tmp_path: Path
) -> None:
    async def nonsense(request: web.Request) -> web.Response:
        if request.path == "/v2/":
            return web.json_response({})
        if "/manifests/" in request.path:
            name = request.path.split("/")[3]
            headers = {"Docker-Content-Digest": "sha256:zzz"} if name == "baddigest" else {}
            body = b"[1, 2" if name == "notjson" else b'{"schemaVersion": 1}'
            return web.Response(body=body, headers=headers,
                                content_type="application/vnd.oci.image.manifest.v1+json")
        return web.Response(status=500, text="boom")

    app = web.Application()
    app.router.add_get("/{tail:.*}", nonsense)
    server = await aiohttp_server(app)
    config = dataclasses.replace(ServerConfig(log_access=False),
                                 proxy_remoteurl=f"http://127.0.0.1:{server.port}")
    proxy = await aiohttp_client(make_app(config, storage=tmp_path / "mirror"))
    for name in ("baddigest", "notjson", "schema1"):
        resp = await proxy.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status == 502, (name, await resp.text())
        assert await error_codes(resp) == ["UNAVAILABLE"]
    resp = await proxy.get(f"/v2/lib/app/blobs/{Digest.of(b'x')}")
    assert resp.status == 502
    assert await error_codes(resp) == ["UNAVAILABLE"]
