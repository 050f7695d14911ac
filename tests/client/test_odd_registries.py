"""pull / push / copy against registries that behave as real ones do where pybuild's own
registry and CNCF Distribution do not: blobs redirected to an object store, Bearer
tokens that expire, throttling, odd manifest answers, upload ``Location`` forms."""

from __future__ import annotations

import email.utils
import gzip
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cas import Digest
from registry import oci
from registry.client.answers import decoded, retry_after
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient
from registry.client.transfer import TransferOptions
from registry.errors import RegistryError

from .helpers import SampleImage, make_image, random_bytes, simple_image, store_image
from .oddreg import OddRegistry, Storage

Serve = Callable[..., Awaitable[tuple[OddRegistry, str]]]


@pytest.fixture(autouse=True)
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    for name in ("PYBUILD_REGISTRY_USER", "PYBUILD_REGISTRY_PASSWORD", "PYBUILD_REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def serve(aiohttp_server: Any) -> Serve:
    async def start(**kw: Any) -> tuple[OddRegistry, str]:
        reg = OddRegistry(**kw)
        server = await aiohttp_server(reg.app())
        return reg, f"127.0.0.1:{server.port}"

    return start


def seed(reg: OddRegistry, image: SampleImage, name: str = "a/b", tag: str = "1") -> None:
    for blob in (image.config, *image.layers):
        reg.blobs[str(Digest.of(blob))] = blob
    media_type = "application/vnd.oci.image.manifest.v1+json"
    reg.manifests[(name, tag)] = reg.manifests[(name, str(image.digest))] = (image.manifest, media_type)


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient, **kw: Any) -> Any:
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions(**kw))


def small_parts() -> TransferOptions:
    """Range parts of 64 KiB from 64 KiB up: every layer of simple_image comes in parts."""
    return TransferOptions(part_size=64 << 10, parallel_threshold=64 << 10)


def fast_client(**kw: Any) -> RegistryClient:
    return RegistryClient(ClientOptions(retries=2, backoff=0.01, **kw))


async def assert_pulled(images: ImageStore, ref: str, image: SampleImage) -> None:
    manifest, _ = await images.get(ref)
    assert manifest.to_json()["layers"] == json.loads(image.manifest)["layers"]
    for blob in (image.config, *image.layers):
        assert await images.store.read_bytes(Digest.of(blob)) == blob


# --- blobs redirected to an object store ------------------------------------------------------

async def test_a_blob_redirected_to_presigned_storage_is_fetched_without_credentials(
    serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    storage = Storage()
    store_server = await aiohttp_server(storage.app())
    # "localhost": another host than the registry's 127.0.0.1 as far as credentials go.
    reg, host = await serve(storage=storage, storage_base=f"http://localhost:{store_server.port}",
                            bearer=True)
    image = simple_image(11, sizes=(300_000, 40_000))
    seed(reg, image)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, transfer=small_parts())
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert storage.seen, "the blobs came from the store"
    # The query string arrived exactly as the registry signed it (or the store said 403),
    # never with the registry's token, and Range went along.
    assert {auth for _, auth, _ in storage.seen} == {""}
    assert any(rng for _, _, rng in storage.seen)


async def test_a_redirect_target_that_refuses_once_is_asked_again_from_the_registry(
    serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    storage = Storage(refuse=1)
    store_server = await aiohttp_server(storage.app())
    reg, host = await serve(storage=storage, storage_base=f"http://localhost:{store_server.port}")
    image = simple_image(12, sizes=(30_000,))
    seed(reg, image)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, jobs=1)
    await assert_pulled(images, f"{host}/a/b:1", image)
    blob_gets = [p for m, p in reg.log if m == "GET" and "/blobs/sha256:" in p]
    assert len(blob_gets) == 3  # config and layer, and the refused one once more


async def test_a_redirect_target_that_keeps_refusing_is_a_clear_error_without_its_signature(
    serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    storage = Storage(refuse=100)
    store_server = await aiohttp_server(storage.app())
    reg, host = await serve(storage=storage, storage_base=f"http://localhost:{store_server.port}")
    image = simple_image(13, sizes=(30_000,))
    seed(reg, image)
    async with fast_client() as client:
        with pytest.raises(Exception) as err:
            await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, jobs=1)
    message = str(err.value)
    assert f"localhost:{store_server.port}" in message
    assert "403" in message and "Request has expired" in message
    assert "X-Amz-Signature" not in message  # a presigned URL is a credential
    # Asked twice from the registry, not retried like a 5xx.
    assert len([p for m, p in reg.log if m == "GET" and "/blobs/sha256:" in p]) <= 4


# --- throttling -------------------------------------------------------------------------------

def test_retry_after_in_both_forms() -> None:
    assert retry_after("7") == 7
    assert retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now=1792567670.0) == 10
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # past
    assert retry_after(None) is None and retry_after("soon") is None


@pytest.mark.parametrize("form", ["seconds", "date"])
async def test_throttled_requests_wait_as_retry_after_asks(
    form: str, serve: Serve, images: ImageStore
) -> None:
    when = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
    reg, host = await serve(throttle=[(429, {"Retry-After": when}), (503, {"Retry-After": "0"})],
                            throttle_match=lambda r: "/manifests/" in r.path)
    image = simple_image(21, sizes=(20_000,))
    seed(reg, image)
    started = time.monotonic()
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
    assert time.monotonic() - started >= 0.9  # not the client's own 10 ms backoff
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert not reg.throttle


async def test_a_throttled_upload_chunk_is_sent_again(serve: Serve, images: ImageStore) -> None:
    reg, host = await serve(throttle=[(429, {"Retry-After": "0"})] * 2,
                            throttle_match=lambda r: r.method in ("PATCH", "PUT") and "/uploads/" in r.path)
    image = simple_image(22, sizes=(100_000,))
    await store_image(images, f"{host}/a/b:1", image)
    async with fast_client() as client:
        await copy(f"local:{host}/a/b:1", f"{host}/a/b:1", images, client,
                   transfer=TransferOptions(upload_chunk=64 << 10))
    assert reg.manifests[("a/b", "1")][0] == image.manifest
    assert all(reg.blobs[str(Digest.of(b))] == b for b in image.layers)
    assert not reg.throttle


@pytest.mark.parametrize(("wait", "said"), [("0", "after 3 attempts"), ("3600", "wait 3600 s")])
async def test_throttling_that_persists_is_a_clear_error(
    wait: str, said: str, serve: Serve, images: ImageStore
) -> None:
    _, host = await serve(throttle=[(429, {"Retry-After": wait})] * 10)
    async with fast_client() as client:
        with pytest.raises(RegistryError) as err:
            await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
    assert err.value.status == 429
    assert said in str(err.value) and "try again later" in str(err.value)


# --- manifests as registries serve them ---------------------------------------------------------

@pytest.mark.parametrize("served", [
    "application/json",  # old Distribution versions, and static mirrors
    "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
    "text/plain; charset=utf-8",
])
@pytest.mark.parametrize("digest_header", [True, False])
async def test_a_manifest_served_with_another_content_type_is_read_by_its_shape(
    served: str, digest_header: bool, serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(manifest_type=lambda _: served, digest_header=digest_header)
    image = simple_image(31, sizes=(20_000,))
    doc = json.loads(image.manifest)
    del doc["mediaType"]  # optional in an OCI manifest: the header and the shape are left
    image.manifest = json.dumps(doc).encode()
    seed(reg, image)
    async with fast_client() as client:
        pulled = await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
        assert pulled.media_type == "application/vnd.oci.image.manifest.v1+json"
        assert pulled.digest == image.digest
        # Pinned by digest: checked against the bytes whatever the headers say.
        await copy(f"{host}/a/b@{image.digest}", f"local:{host}/a/b:2", images, client)
    await assert_pulled(images, f"{host}/a/b:1", image)


async def test_a_docker_manifest_list_served_as_json_and_gzipped_is_pulled(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(manifest_type=lambda _: "application/json", gzip_json=True,
                            digest_header=False)
    amd = make_image([[random_bytes(5000, 1)]], media_type=oci.DOCKER_MANIFEST)
    arm = make_image([[random_bytes(5000, 2)]], arch="arm64", media_type=oci.DOCKER_MANIFEST)
    seed(reg, amd, tag=str(amd.digest))
    seed(reg, arm, tag=str(arm.digest))
    index = json.dumps({"schemaVersion": 2, "mediaType": oci.DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": oci.DOCKER_MANIFEST, "digest": str(img.digest), "size": len(img.manifest),
         "platform": {"os": "linux", "architecture": arch}}
        for img, arch in ((amd, "amd64"), (arm, "arm64"))]}).encode()
    reg.manifests[("a/b", "1")] = (index, oci.DOCKER_MANIFEST_LIST)
    async with fast_client() as client:
        pulled = await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client,
                            platform="linux/arm64")
        assert pulled.media_type == oci.DOCKER_MANIFEST
        assert pulled.digest == arm.digest
        assert await client.tags(host, "a/b") == ["1"]
    await assert_pulled(images, f"{host}/a/b:1", arm)


def test_a_compressed_small_body_is_bounded() -> None:
    assert decoded(gzip.compress(b"{}"), "gzip", 10) == b"{}"
    assert decoded(zlib.compress(b"{}"), "deflate", 10) == b"{}"
    with pytest.raises(ValueError, match="over 10 bytes"):
        decoded(gzip.compress(b" " * 1000), "gzip", 10)  # a small gzip bomb
    with pytest.raises(ValueError, match="br"):
        decoded(b"...", "br", 10)
