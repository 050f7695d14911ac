"""Piece-level pulls: v2 after v1 fetches only the pieces v1 did not have."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cas import Digest
from cas.frames import gzip_member
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.pull import TransferOptions
from registry.client.remote import RegistryClient
from registry.server import ServerConfig, make_app
from registry.server.proxy_config import parse_upstreams

from .helpers import make_image, random_bytes, store_image


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient):
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions())


async def publish(repo: str, versions: dict[str, Any], tmp_path: Path,
                  client: RegistryClient) -> None:
    """Push each ``tag: image`` of ``versions`` to ``repo`` (host included)."""
    async with await ImageStore.open(tmp_path / "publisher") as publisher:
        for tag, image in versions.items():
            ref = f"{repo}:{tag}"
            await store_image(publisher, ref, image)
            await copy(f"local:{ref}", ref, publisher, client)


def _count_piece_reads(images) -> list[str]:  # type: ignore[no-untyped-def]
    """Record the key of every ``read_piece`` call on ``images``' store from now on."""
    reads: list[str] = []
    read_piece = images.store.read_piece

    async def counted(key: str) -> bytes:
        reads.append(key)
        return await read_piece(key)

    images.store.read_piece = counted
    return reads

async def test_pull_of_v2_fetches_only_changed_pieces(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
    tmp_path: Path,
) -> None:
    chunks = [random_bytes(65_536, 900 + i) for i in range(40)]
    v1 = make_image([chunks])
    changed = list(chunks)
    changed[5] = random_bytes(65_536, 5000)
    changed[30] = random_bytes(65_536, 5001)
    v2 = make_image([changed])
    await publish(f"{pybuild_registry}/pieces/app", {"v1": v1, "v2": v2}, tmp_path, client)

    proxy, host = await make_proxy(pybuild_registry)
    await copy(f"{host}/pieces/app:v1", f"local:{host}/pieces/app:v1", images, client)
    layer1 = v1.layers[0]
    assert proxy.blob_bytes >= len(layer1)

    proxy.blob_bytes = 0
    proxy.log.clear()
    piece_reads = _count_piece_reads(images)
    progress = Progress("quiet")
    result = await copy_image(parse_endpoint(f"{host}/pieces/app:v2"),
                              parse_endpoint(f"local:{host}/pieces/app:v2"), images, client,
                              progress, CopyOptions())
    assert result.digest == v2.digest
    layer2 = v2.layers[0]
    assert await images.store.read_bytes(Digest.of(layer2)) == layer2
    # Two of forty frames changed: the server sent those two (plus the tiny config).
    old = set(_members(chunks))
    changed_bytes = sum(len(m) for m in _members(changed) if m not in old)
    assert 0 < changed_bytes < len(layer2) // 10
    assert proxy.blob_bytes <= changed_bytes + len(v2.config)
    assert progress.reused >= len(layer2) - changed_bytes
    assert any(m == "GET" and "_pybuild/blob/recipe" in p for m, p, _ in proxy.log)
    # The unchanged pieces were read as runs of v1's layer, not looked up one by one.
    assert piece_reads == []
    assert (await images.store.fsck()).ok


async def test_a_cold_pull_asks_for_no_recipe_and_the_next_pull_does(
    pybuild_registry: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
    tmp_path: Path,
) -> None:
    # An empty store holds none of any blob's pieces: a recipe could save nothing.
    v1 = make_image([[random_bytes(65_536, 300 + i) for i in range(8)],
                     [random_bytes(65_536, 400 + i) for i in range(8)]])
    v2 = make_image([[random_bytes(65_536, 300 + i) for i in range(8)],
                     [random_bytes(65_536, 500 + i) for i in range(8)]])
    await publish(f"{pybuild_registry}/pieces/cold", {"v1": v1, "v2": v2}, tmp_path, client)
    proxy, host = await make_proxy(pybuild_registry)
    assert not await images.store.holds_pieces()
    await copy(f"{host}/pieces/cold:v1", f"local:{host}/pieces/cold:v1", images, client)
    extension = [p for _, p, _ in proxy.log if "/_pybuild/" in p or "/_oci/ext/" in p]
    assert extension == []
    blob_gets = [p for m, p, _ in proxy.log if m == "GET" and "/blobs/" in p]
    assert len(blob_gets) == 3  # the config and two layers, each one GET
    for layer in v1.layers:
        assert await images.store.read_bytes(Digest.of(layer)) == layer
    # With v1's pieces in the store, v2's pull asks for recipes and reuses them.
    proxy.log.clear()
    await copy(f"{host}/pieces/cold:v2", f"local:{host}/pieces/cold:v2", images, client)
    assert any("_pybuild/blob/recipe" in p for _, p, _ in proxy.log)


async def test_v2_through_a_mirror_by_host_fetches_only_changed_pieces(
    pybuild_registry: str, make_proxy: Any, aiohttp_server: Any, images: ImageStore,
    client: RegistryClient, tmp_path: Path,
) -> None:
    # pybuild serve mirroring the registry as upstream host "upstream.test": the client
    # pulls <mirror>/upstream.test/pieces/app and asks the mirror for recipes by that name.
    chunks = [random_bytes(65_536, 2100 + i) for i in range(30)]
    changed = list(chunks)
    changed[7] = random_bytes(65_536, 2900)
    v1, v2 = make_image([chunks]), make_image([changed])
    await publish(f"{pybuild_registry}/pieces/app", {"v1": v1, "v2": v2}, tmp_path, client)
    config = dataclasses.replace(ServerConfig(log_access=False), proxy_upstreams=parse_upstreams(
        [{"host": "upstream.test", "remoteurl": f"http://{pybuild_registry}"}]))
    mirror = await aiohttp_server(make_app(config, storage=tmp_path / "mirror"))
    proxy, host = await make_proxy(f"127.0.0.1:{mirror.port}")
    repo = f"{host}/upstream.test/pieces/app"
    await copy(f"{repo}:v1", f"local:{repo}:v1", images, client)
    proxy.blob_bytes = 0
    proxy.log.clear()
    result = await copy(f"{repo}:v2", f"local:{repo}:v2", images, client)
    assert result.digest == v2.digest
    layer = v2.layers[0]
    assert await images.store.read_bytes(Digest.of(layer)) == layer
    assert any("_pybuild/blob/recipe" in p for _, p, _ in proxy.log)
    old = set(_members(chunks))
    changed_bytes = sum(len(m) for m in _members(changed) if m not in old)
    assert proxy.blob_bytes <= changed_bytes + len(v2.config)


def _members(chunks: list[bytes]) -> list[bytes]:
    return [gzip_member(c, level=1) for c in chunks]


@pytest.mark.parametrize("ranges", [1, 8])
async def test_missing_pieces_are_fetched_concurrently(
    ranges: int, pybuild_registry: str, make_proxy: Any, images: ImageStore,
    client: RegistryClient, tmp_path: Path,
) -> None:
    """Eight separate runs of changed pieces, 50 ms of latency per request: the pull keeps
    ``window`` Range requests in flight (so it takes about one latency, not eight)."""
    chunks = [random_bytes(65_536, 1200 + i) for i in range(48)]
    changed = list(chunks)
    for i in range(2, 48, 6):  # 8 runs, each between unchanged pieces
        changed[i] = random_bytes(65_536, 7000 + i)
    v1, v2 = make_image([chunks]), make_image([changed])
    await publish(f"{pybuild_registry}/pieces/lat", {"v1": v1, "v2": v2}, tmp_path, client)
    proxy, host = await make_proxy(pybuild_registry)
    await copy(f"{host}/pieces/lat:v1", f"local:{host}/pieces/lat:v1", images, client)

    proxy.blob_delay, proxy.max_blob_gets_in_flight = 0.05, 0
    options = CopyOptions(transfer=TransferOptions(window=ranges))
    result = await copy_image(parse_endpoint(f"{host}/pieces/lat:v2"),
                              parse_endpoint(f"local:{host}/pieces/lat:v2"), images, client,
                              Progress("quiet"), options)
    assert result.digest == v2.digest
    layer = v2.layers[0]
    assert await images.store.read_bytes(Digest.of(layer)) == layer
    runs = [e for e in proxy.log if e[0] == "GET" and Digest.of(layer).encoded in e[1]]
    assert len(runs) == 8  # one Range request per run of changed pieces
    # The config blob's GET may overlap too: at most one more.
    assert ranges <= proxy.max_blob_gets_in_flight <= ranges + 1


def test_plan_reads_consecutive_local_pieces_as_one_run() -> None:
    from registry.client.pull import _Part, _plan_pieces

    x, y = Digest.of(b"x"), Digest.of(b"y")
    pieces = [(0, 10, "a"), (10, 10, "b"), (20, 10, "c"), (30, 10, "d"), (40, 10, "e")]
    sources = {"a": (x, 100), "b": (x, 110), "d": (y, 0), "e": (x, 120)}
    # Resuming at byte 5: the run starts mid-piece, at the matching offset of x.
    parts = _plan_pieces(pieces, {"a", "b", "d", "e"}, 5, 100, sources)
    assert parts == [
        _Part(5, 20, True, ((0, 10, "a"), (10, 10, "b")), (x, 105)),
        _Part(20, 30, False, ((20, 10, "c"),)),
        _Part(30, 40, True, ((30, 10, "d"),), (y, 0)),
        _Part(40, 50, True, ((40, 10, "e"),), (x, 120)),  # not right after d in y
    ]
    # Missing runs are cut at part_size, local runs are not; without sources every local
    # piece is its own part.
    parts = _plan_pieces(pieces, {"a", "b"}, 0, 15, sources)
    assert [(p.start, p.end) for p in parts] == [(0, 20), (20, 30), (30, 40), (40, 50)]
    assert [p.source for p in _plan_pieces(pieces, {"a", "b"}, 0, 100, {})] == [None, None, None]


async def test_resumed_pull_with_a_local_run_of_a_removed_blob_falls_back_to_single_pieces(
    pybuild_registry: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
) -> None:
    from registry.client.pull import pull_blob
    from registry.client.refs import parse_image_ref
    from registry.oci import Descriptor

    chunks = [random_bytes(65_536, 1500 + i) for i in range(12)]
    changed = [*chunks[:6], random_bytes(65_536, 9999), *chunks[7:]]
    v1, v2 = make_image([chunks]), make_image([changed])
    for tag, image in (("v1", v1), ("v2", v2)):
        ref = f"{pybuild_registry}/pieces/gone:{tag}"
        async with await ImageStore.open(tmp_path / f"publisher-{tag}") as publisher:
            await store_image(publisher, ref, image)
            await copy(f"local:{ref}", ref, publisher, client)
    await copy(f"{pybuild_registry}/pieces/gone:v1", f"local:{pybuild_registry}/pieces/gone:v1",
               images, client)
    recipe = await images.store.recipe(Digest.of(v1.layers[0]))
    gone = Digest.of(b"a layer that is no longer here")
    sources = {p.key: (gone, p.offset) for p in recipe.pieces}
    layer = v2.layers[0]
    desc = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", Digest.of(layer), len(layer))
    # An interrupted pull of v2 (its first bytes checkpointed) continues as bytes: a fresh
    # one would be assembled from the recipe (tests/client/test_pull_assembly.py).
    ing = await images.store.begin_ingest()
    await ing.write(layer[:1000])
    await ing.checkpoint()
    await images.set_pending_pull(desc.digest, ing.id)
    reads = _count_piece_reads(images)
    status = await pull_blob(client, images, parse_image_ref(f"{pybuild_registry}/pieces/gone:v2"),
                             desc, Progress("quiet"), recipes=True, sources=sources)
    assert status == "pulled"
    assert await images.store.read_bytes(desc.digest) == layer
    assert len(reads) == 11  # every unchanged piece, one by one (the first from byte 1000)
