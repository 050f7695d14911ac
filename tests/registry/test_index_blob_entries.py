"""An index may list blobs, not only manifests: BuildKit's registry cache.

``docker buildx build --cache-to type=registry,ref=REG/app:buildcache`` (without
``image-manifest=true``) pushes an image index whose entries are the cache's layers and its
cache config (``application/vnd.buildkit.cacheconfig.v0``), blobs of the repository. CNCF
Distribution accepts it; an entry of a manifest or index media type must still be a
manifest of the repository.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from cas import Digest
from registry import oci
from registry.server.retention import RetentionSettings, run_retention
from registry.server.state import REGISTRY

from .helpers import descriptor, error_codes, push_blob, push_image

CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
ACCEPT = {"Accept": f"{oci.OCI_INDEX}, {oci.DOCKER_MANIFEST_LIST}"}


def _layer(n: int) -> bytes:
    return gzip.compress(f"cache layer {n}\n".encode() * 100, mtime=0)


def _cache_index(layers: list[bytes], config: bytes, media_type: str) -> dict[str, Any]:
    """The index BuildKit's remote cache exporter writes (cache/remotecache/export.go)."""
    layer_type = oci.OCI_LAYER_GZIP if media_type == oci.OCI_INDEX else oci.DOCKER_LAYER
    entries = [
        {**descriptor(layer_type, layer),
         "annotations": {"buildkit/createdat": "2024-05-01T10:00:00.000000000Z",
                         "containerd.io/uncompressed": str(Digest.of(gzip.decompress(layer)))}}
        for layer in layers
    ]
    return {"schemaVersion": 2, "mediaType": media_type,
            "manifests": [*entries, descriptor(CACHE_CONFIG, config)]}


def _cache_config(layers: list[bytes]) -> bytes:
    return json.dumps({
        "layers": [{"blob": str(Digest.of(layer)), "parent": i - 1} for i, layer in enumerate(layers)],
        "records": [{"digest": "sha256:" + "ab" * 32, "layers": [{"layer": len(layers) - 1}]}],
    }).encode()


async def _push_cache(client, repo: str, tag: str, media_type: str = oci.OCI_INDEX):
    layers = [_layer(1), _layer(2)]
    config = _cache_config(layers)
    for blob in (*layers, config):
        await push_blob(client, repo, blob)
    body = json.dumps(_cache_index(layers, config, media_type)).encode()
    resp = await client.put(f"/v2/{repo}/manifests/{tag}", data=body, headers={"Content-Type": media_type})
    return resp, body, [*layers, config]


@pytest.mark.parametrize("media_type", [oci.OCI_INDEX, oci.DOCKER_MANIFEST_LIST])
async def test_a_buildkit_cache_index_is_stored_and_served_byte_exact(client, media_type):
    resp, body, blobs = await _push_cache(client, "team/app", "buildcache", media_type)
    assert resp.status == 201, await resp.text()
    assert resp.headers["Docker-Content-Digest"] == str(Digest.of(body))
    got = await client.get("/v2/team/app/manifests/buildcache", headers=ACCEPT)
    assert got.status == 200
    assert got.headers["Content-Type"] == media_type
    assert await got.read() == body
    for blob in blobs:  # as BuildKit imports the cache: each entry by its digest
        assert await (await client.get(f"/v2/team/app/blobs/{Digest.of(blob)}")).read() == blob


async def test_a_cache_index_whose_blob_is_not_pushed_is_refused_with_nothing_stored(client):
    layers = [_layer(1), _layer(2)]
    config = _cache_config(layers)
    await push_blob(client, "team/app", layers[0])
    await push_blob(client, "team/app", config)
    body = json.dumps(_cache_index(layers, config, oci.OCI_INDEX)).encode()
    resp = await client.put("/v2/team/app/manifests/buildcache", data=body,
                            headers={"Content-Type": oci.OCI_INDEX})
    assert resp.status == 400
    assert await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]
    assert str(Digest.of(layers[1])) in await resp.text()
    assert (await client.get("/v2/team/app/manifests/buildcache", headers=ACCEPT)).status == 404
    # A blob of another repository is not one of this one.
    await push_blob(client, "other/app", layers[1])
    resp = await client.put("/v2/team/app/manifests/buildcache", data=body,
                            headers={"Content-Type": oci.OCI_INDEX})
    assert await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_a_blob_entry_of_the_wrong_size_is_manifest_invalid(client):
    layers = [_layer(1)]
    config = _cache_config(layers)
    for blob in (*layers, config):
        await push_blob(client, "team/app", blob)
    doc = _cache_index(layers, config, oci.OCI_INDEX)
    doc["manifests"][0]["size"] += 1
    resp = await client.put("/v2/team/app/manifests/buildcache", data=json.dumps(doc).encode(),
                            headers={"Content-Type": oci.OCI_INDEX})
    assert resp.status == 400
    assert await error_codes(resp) == ["MANIFEST_INVALID"]


@pytest.mark.parametrize("media_type", [oci.OCI_MANIFEST, oci.DOCKER_MANIFEST, oci.OCI_INDEX])
async def test_an_entry_of_a_manifest_type_must_be_a_manifest(client, media_type):
    """Bytes pushed as a blob are no manifest: a client would GET them from
    /manifests/ and find nothing."""
    _, body = await push_image(client, "team/app", "img", [b"layer"])
    await client.delete(f"/v2/team/app/manifests/{Digest.of(body)}")
    await push_blob(client, "team/app", body)  # the same bytes, as a blob only
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
             "manifests": [{**descriptor(media_type, body),
                            "platform": {"os": "linux", "architecture": "amd64"}}]}
    resp = await client.put("/v2/team/app/manifests/multi", data=json.dumps(index).encode(),
                            headers={"Content-Type": oci.OCI_INDEX})
    assert resp.status == 400
    assert await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_retention_keeps_the_blobs_a_cache_index_lists(client):
    resp, body, blobs = await _push_cache(client, "team/app", "buildcache")
    assert resp.status == 201
    reg = client.app[REGISTRY]
    now = RetentionSettings(untagged_delay=0, upload_grace=0)
    report = await run_retention(reg.store, reg.meta, now)
    assert report.repositories == []
    for blob in blobs:
        assert (await client.head(f"/v2/team/app/blobs/{Digest.of(blob)}")).status == 200
    # Untagged, the index goes, and with it the links of what only it listed.
    assert (await client.delete("/v2/team/app/manifests/buildcache")).status == 202
    report = await run_retention(reg.store, reg.meta, now)
    assert report.repositories[0].manifests == [str(Digest.of(body))]
    assert set(report.repositories[0].blobs) >= {str(Digest.of(blob)) for blob in blobs}
    for blob in blobs:
        assert (await client.head(f"/v2/team/app/blobs/{Digest.of(blob)}")).status == 404
