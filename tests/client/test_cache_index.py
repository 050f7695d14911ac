"""A BuildKit registry cache (``--cache-to type=registry``) is an index of blobs: a pull
says so instead of taking a layer for an image; an index that also lists an image without
a platform pulls that image."""

from __future__ import annotations

import gzip
import json
import uuid

import aiohttp
import pytest

from cas import Digest
from registry import oci
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageNotFound, ImageStore
from registry.client.progress import Progress
from registry.client.remote import RegistryClient

from .helpers import simple_image

CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"


async def _push(http: aiohttp.ClientSession, base: str, repo: str, data: bytes) -> None:
    async with http.post(f"{base}/v2/{repo}/blobs/uploads/") as resp:
        assert resp.status == 202, await resp.text()
        location = resp.headers["Location"]
    url = location if location.startswith("http") else base + location
    url += ("&" if "?" in url else "?") + f"digest={Digest.of(data)}"
    async with http.put(url, data=data, headers={"Content-Type": "application/octet-stream"}) as resp:
        assert resp.status == 201, await resp.text()


async def _put_manifest(http: aiohttp.ClientSession, base: str, repo: str, ref: str, doc: dict) -> None:
    async with http.put(f"{base}/v2/{repo}/manifests/{ref}", data=json.dumps(doc).encode(),
                        headers={"Content-Type": doc["mediaType"]}) as resp:
        assert resp.status == 201, await resp.text()


def _entry(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": str(Digest.of(data)), "size": len(data)}


async def test_pulling_a_build_cache_says_it_is_not_an_image(
    registry_host: str, images: ImageStore, client: RegistryClient
) -> None:
    repo = f"test/{uuid.uuid4().hex[:10]}"
    base = f"http://{registry_host}"
    layer = gzip.compress(b"cached step\n" * 50, mtime=0)
    config = json.dumps({"layers": [{"blob": str(Digest.of(layer)), "parent": -1}]}).encode()
    image = simple_image(21, (20_000,))
    async with aiohttp.ClientSession() as http:
        for blob in (layer, config, image.config, *image.layers):
            await _push(http, base, repo, blob)
        cache = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                 "manifests": [_entry(oci.OCI_LAYER_GZIP, layer), _entry(CACHE_CONFIG, config)]}
        await _put_manifest(http, base, repo, "buildcache", cache)
        await _put_manifest(http, base, repo, "img", json.loads(image.manifest))
        # Blobs first, then an image that names no platform: the image is the one to take.
        mixed = {**cache, "manifests": [*cache["manifests"], _entry(oci.OCI_MANIFEST, image.manifest)]}
        await _put_manifest(http, base, repo, "mixed", mixed)

    async def pull(tag: str):
        ref = f"{registry_host}/{repo}:{tag}"
        return await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images, client,
                                Progress("quiet"), CopyOptions())

    with pytest.raises(ImageNotFound, match=r"lists no image manifest.*buildkit\.cacheconfig"):
        await pull("buildcache")
    assert await images.resolve(f"{registry_host}/{repo}:buildcache") is None
    assert (await pull("mixed")).digest == image.digest


async def _get(http: aiohttp.ClientSession, url: str, accept: str = "") -> tuple[int, bytes]:
    async with http.get(url, headers={"Accept": accept} if accept else {}) as resp:
        return resp.status, await resp.read()


@pytest.mark.parametrize("direction", ["pybuild-to-distribution", "distribution-to-pybuild"])
async def test_copy_all_platforms_of_a_build_cache_copies_its_blob_entries(
    pybuild_registry: str, distribution: str, images: ImageStore, client: RegistryClient,
    tmp_path, direction: str,
) -> None:
    """``copy --all-platforms`` of an index whose entries are blobs (a BuildKit registry
    cache): the blobs are copied as blobs, a manifest entry as a manifest, then the index,
    byte for byte; to a registry, to the local store and to an OCI layout."""
    src_host, dst_host = ((pybuild_registry, distribution) if direction.startswith("pybuild")
                          else (distribution, pybuild_registry))
    repo = f"test/{uuid.uuid4().hex[:10]}"
    layer = gzip.compress(b"cached step\n" * 50, mtime=0)
    config = json.dumps({"layers": [{"blob": str(Digest.of(layer)), "parent": -1}]}).encode()
    image = simple_image(22, (20_000,))
    cache = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
             "manifests": [_entry(oci.OCI_LAYER_GZIP, layer), _entry(CACHE_CONFIG, config)]}
    mixed = {**cache, "manifests": [*cache["manifests"], _entry(oci.OCI_MANIFEST, image.manifest)]}
    async with aiohttp.ClientSession() as http:
        for blob in (layer, config, image.config, *image.layers):
            await _push(http, f"http://{src_host}", repo, blob)
        await _put_manifest(http, f"http://{src_host}", repo, "img", json.loads(image.manifest))
        await _put_manifest(http, f"http://{src_host}", repo, "buildcache", cache)
        await _put_manifest(http, f"http://{src_host}", repo, "mixed", mixed)
        _, cache_raw = await _get(http, f"http://{src_host}/v2/{repo}/manifests/buildcache", oci.OCI_INDEX)
        _, mixed_raw = await _get(http, f"http://{src_host}/v2/{repo}/manifests/mixed", oci.OCI_INDEX)

        async def copy(tag: str, dst: str):
            return await copy_image(parse_endpoint(f"{src_host}/{repo}:{tag}"), parse_endpoint(dst),
                                    images, client, Progress("quiet"), CopyOptions(all_platforms=True))

        for tag, raw in (("buildcache", cache_raw), ("mixed", mixed_raw)):
            result = await copy(tag, f"{dst_host}/{repo}:{tag}")
            assert result.digest == Digest.of(raw)
            status, body = await _get(http, f"http://{dst_host}/v2/{repo}/manifests/{tag}", oci.OCI_INDEX)
            assert status == 200 and body == raw
            for blob in (layer, config):
                assert await _get(http, f"http://{dst_host}/v2/{repo}/blobs/{Digest.of(blob)}") == (200, blob)
        status, body = await _get(http, f"http://{dst_host}/v2/{repo}/manifests/{image.digest}",
                                  oci.OCI_MANIFEST)
        assert status == 200 and body == image.manifest

    # Into the local store: the index and every blob it lists, linked to the image.
    local = f"local:{src_host}/{repo}:buildcache"
    assert (await copy("buildcache", local)).digest == Digest.of(cache_raw)
    assert (await images.resolve(f"{src_host}/{repo}:buildcache")) is not None
    for blob in (layer, config):
        assert await images.store.read_bytes(Digest.of(blob)) == blob
    # Into an OCI layout: the same index, its blobs beside it.
    out = tmp_path / "layout"
    assert (await copy("buildcache", f"oci:{out}:buildcache")).digest == Digest.of(cache_raw)
    for data in (cache_raw, layer, config):
        assert (out / "blobs" / "sha256" / Digest.of(data).encoded).read_bytes() == data
