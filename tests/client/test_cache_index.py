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
