"""The HTTP layer over an in-memory store double: error translation at the boundary."""

from __future__ import annotations

import pytest

from cas import Digest
from registry.server import ServerConfig, make_app
from registry.server.state import REGISTRY, ManifestCache

from .fakes import FakeStore
from .helpers import error_codes, push_blob, push_image


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def client(aiohttp_client, store, tmp_path):
    return await aiohttp_client(make_app(ServerConfig(), store=store, storage=tmp_path))


async def test_push_and_pull_over_the_double(client, store):
    digest, body = await push_image(client, "fake/app", "v1", [b"layer"])
    assert store.blobs[digest] == body
    assert "repo:fake/app" in store.links[digest]
    resp = await client.get("/v2/fake/app/manifests/v1")
    assert await resp.read() == body


async def test_storage_full_is_reported_not_crashed(client, store):
    store.fail_writes = True
    resp = await client.post(f"/v2/full/blobs/uploads/?digest={Digest.of(b'x')}", data=b"x")
    assert resp.status == 507
    assert await error_codes(resp) == ["UNAVAILABLE"]
    assert "storage full" in (await resp.json())["errors"][0]["message"]
    assert store.ingests == {}  # the failed monolithic ingest was aborted
    store.fail_writes = False
    assert (await client.get("/v2/")).status == 200


async def test_manifest_bytes_missing_from_the_store_is_blob_unknown(client, store):
    digest, _ = await push_image(client, "gone", "v1", [b"layer"])
    del store.blobs[digest]
    client.app[REGISTRY].cache = ManifestCache(1 << 20)  # as after a restart
    resp = await client.get(f"/v2/gone/manifests/{digest}")
    assert resp.status == 404
    assert await error_codes(resp) == ["BLOB_UNKNOWN"]


async def test_sha512_upload_over_the_double(client, store):
    digest = await push_blob(client, "alg", b"bytes", "sha512")
    assert Digest.of(b"bytes", "sha512") == digest
    assert store.blobs[digest] == b"bytes"
