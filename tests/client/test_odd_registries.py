"""pull / push / copy against registries that behave as real ones do where pybuild's own
registry and CNCF Distribution do not: blobs redirected to an object store, registries
in front of others, Bearer tokens that expire or want more scopes, identity tokens,
throttling, odd manifest answers, upload ``Location`` forms and statuses, connections
closed unannounced (see docs/client.md, "What real registries do")."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import json
import os
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from cas import Digest
from registry import oci
from registry.client.answers import decoded, retry_after
from registry.client.auth import Credentials, HostAuth
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient, TransportError
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
        reg.links.add((name, str(Digest.of(blob))))
    media_type = json.loads(image.manifest).get("mediaType", oci.OCI_MANIFEST)
    reg.manifests[(name, tag)] = reg.manifests[(name, str(image.digest))] = (image.manifest, media_type)


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient, **kw: Any) -> Any:
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions(**kw))


def small_parts() -> TransferOptions:
    """Range parts of 64 KiB from 64 KiB up: every layer of simple_image comes in parts."""
    return TransferOptions(part_size=64 << 10, parallel_threshold=64 << 10)


def fast_client(**kw: Any) -> RegistryClient:
    return RegistryClient(ClientOptions(**{"retries": 2, "backoff": 0.01, **kw}))


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


async def _behind_refusing_storage(serve: Serve, aiohttp_server: Any, refuse: int,
                                   seed_n: int) -> tuple[Any, str, Any, str]:
    """A registry that redirects blob GETs to a store refusing the first ``refuse`` of
    them, holding an image of one 30 kB layer: (registry, host, image, the store's
    host:port)."""
    storage = Storage(refuse=refuse)
    store_server = await aiohttp_server(storage.app())
    reg, host = await serve(storage=storage, storage_base=f"http://localhost:{store_server.port}")
    image = simple_image(seed_n, sizes=(30_000,))
    seed(reg, image)
    return reg, host, image, f"localhost:{store_server.port}"


async def test_a_redirect_target_that_refuses_once_is_asked_again_from_the_registry(
    serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    reg, host, image, _ = await _behind_refusing_storage(serve, aiohttp_server, 1, seed_n=12)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, jobs=1)
    await assert_pulled(images, f"{host}/a/b:1", image)
    blob_gets = [p for m, p in reg.log if m == "GET" and "/blobs/sha256:" in p]
    assert len(blob_gets) == 3  # config and layer, and the refused one once more


async def test_a_redirect_target_that_keeps_refusing_is_a_clear_error_without_its_signature(
    serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    reg, host, _, store = await _behind_refusing_storage(serve, aiohttp_server, 100, seed_n=13)
    async with fast_client() as client:
        with pytest.raises(Exception) as err:
            await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, jobs=1)
    message = str(err.value)
    assert store in message
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
    reg, host = await serve(throttle=[(429, {"Retry-After": when}), (503, {"Retry-After": "0"}),
                                      (408, {})],
                            throttle_match=lambda r: "/manifests/" in r.path)
    image = simple_image(21, sizes=(20_000,))
    seed(reg, image)
    started = time.monotonic()
    async with fast_client(retries=3) as client:
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


@pytest.mark.parametrize("rel", ['"next"', "next", 'NEXT'])
async def test_a_tag_list_in_pages_is_followed_however_its_link_says_next(
    rel: str, serve: Serve
) -> None:
    reg, host = await serve(tags_page=2, tags_rel=rel)
    image = simple_image(32, sizes=(20_000,))
    for tag in ("a", "b", "c", "d", "e"):
        seed(reg, image, tag=tag)
    async with fast_client() as client:
        assert await client.tags(host, "a/b") == ["a", "b", "c", "d", "e"]
    assert len([p for _, p in reg.log if "/tags/list" in p]) == 3


async def test_a_tag_list_whose_link_loops_back_is_an_error_not_a_hang(serve: Serve) -> None:
    # A registry whose paginator always names the same page: Link was followed forever.
    reg, host = await serve(tags_page=2, tags_loop=True)
    image = simple_image(33, sizes=(20_000,))
    for tag in ("a", "b", "c"):
        seed(reg, image, tag=tag)
    async with fast_client() as client:
        with pytest.raises(TransportError, match=r"tag list of a/b links back to a page it sent "
                                                 r"\(/v2/a/b/tags/list\?n=2&last=\): its pagination loops"):
            await asyncio.wait_for(client.tags(host, "a/b"), 20)
        assert await client.tags(host, "a/b", pages=1) == ["a", "b"]
    assert len([p for _, p in reg.log if "/tags/list" in p]) == 2 + 1  # the loop is one page long


def test_a_compressed_small_body_is_bounded() -> None:
    assert decoded(gzip.compress(b"{}"), "gzip", 10) == b"{}"
    assert decoded(zlib.compress(b"{}"), "deflate", 10) == b"{}"
    with pytest.raises(ValueError, match="over 10 bytes"):
        decoded(gzip.compress(b" " * 1000), "gzip", 10)  # a small gzip bomb
    with pytest.raises(ValueError, match="br"):
        decoded(b"...", "br", 10)


# --- uploads ----------------------------------------------------------------------------------

async def push_and_check(reg: OddRegistry, host: str, images: ImageStore, *, chunk: int = 64 << 10,
                         seed_: int = 41) -> SampleImage:
    """Push an image of a 150 kB and a 30 kB layer (chunked, and in one PUT, at ``chunk``)."""
    image = simple_image(seed_, sizes=(150_000, 30_000))
    ref = f"{host}/a/b:{uuid.uuid4().hex[:8]}"
    await store_image(images, ref, image)
    async with fast_client() as client:
        pushed = await copy(f"local:{ref}", ref, images, client,
                            transfer=TransferOptions(upload_chunk=chunk))
    assert pushed.digest == image.digest
    assert reg.manifests[("a/b", ref.rpartition(":")[2])][0] == image.manifest
    for blob in (image.config, *image.layers):
        assert reg.blobs[str(Digest.of(blob))] == blob
    assert not reg.uploads, "every upload session was closed"
    return image


@pytest.mark.parametrize("location", ["relative", "absolute", "state", "other"])
async def test_upload_locations_of_every_form_are_followed_as_given(
    location: str, serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    reg, host = await serve(location=location)
    other = await aiohttp_server(reg.app())  # the same registry on another host:port
    reg.other_base = f"http://localhost:{other.port}"
    await push_and_check(reg, host, images)
    patches = [p for m, p in reg.log if m == "PATCH"]
    puts = [p for m, p in reg.log if m == "PUT" and "/uploads/" in p]
    assert patches and puts
    if location == "state":  # the registry's own query is kept, digest= added to it
        assert all("?_state=a%2Fb%3D%3D&hash=x" in p for p in patches + puts)
        assert all(p.endswith("&digest=" + p.rpartition("digest=")[2]) for p in puts)


async def test_an_upload_location_on_another_host_that_asks_for_a_token_gets_its_own(
    serve: Serve, aiohttp_server: Any, images: ImageStore
) -> None:
    """As containerd: the other host's challenge is answered for that host (anonymously
    here: there are credentials for the registry only), never with the registry's."""
    reg, host = await serve(bearer=True, users={"u": "p"}, location="other")
    other = await aiohttp_server(reg.app())
    reg.other_base = f"http://localhost:{other.port}"
    basic = Credentials("u", "p").basic()
    image = simple_image(42, sizes=(150_000, 30_000))
    ref = f"{host}/a/b:1"
    await store_image(images, ref, image)
    async with fast_client(credentials={host: Credentials("u", "p")}) as client:
        await copy(f"local:{ref}", ref, images, client, transfer=TransferOptions(upload_chunk=64 << 10))
    assert reg.manifests[("a/b", "1")][0] == image.manifest
    registry_tokens = {f"Bearer {t['token']}" for t in reg.token_requests if t["auth"] == basic}
    at_other = [a for h, a in reg.auth_seen if h == f"localhost:{other.port}"]
    assert registry_tokens and at_other and any(at_other)
    assert not set(at_other) & registry_tokens and basic not in at_other


@pytest.mark.parametrize(("post", "patch", "put", "manifest"), [
    (202, 202, 201, 201),  # the spec's
    (202, 204, 204, 200),  # Quay-like: 204 for chunks and the close, 200 for a manifest
    (202, 202, 200, 202),  # 200 closing an upload, 202 for a manifest
])
async def test_any_success_status_of_an_upload_step_is_taken(
    post: int, patch: int, put: int, manifest: int, serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(post_status=post, patch_status=patch, put_status=put,
                            manifest_put_status=manifest, put_location=False)
    await push_and_check(reg, host, images)


async def test_a_chunk_answered_without_location_keeps_the_session_url(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(patch_location=False)
    await push_and_check(reg, host, images)
    assert len([m for m, _ in reg.log if m == "PATCH"]) == 3  # 150 kB in 64 KiB chunks
    # Not taken for a broken answer: no session was asked where it stands.
    assert not [p for m, p in reg.log if m == "GET" and "/uploads/" in p]


async def test_chunks_are_at_least_the_registrys_minimum_length(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(chunk_min=100_000)
    image = await push_and_check(reg, host, images, chunk=16 << 10)
    big, small = (len(layer) for layer in image.layers)
    assert big > 100_000 > small > 16 << 10
    # The big layer in a chunk of 100,000 bytes and its last one; the small one in one
    # (the last may be shorter); the config in one PUT (monolithic: at any minimum).
    assert sorted(reg.chunks.values()) == [[small], [100_000, big - 100_000]]


# --- Bearer tokens ------------------------------------------------------------------------------

@pytest.mark.parametrize("field_name", ["token", "access_token"])
async def test_anonymous_tokens_that_expire_mid_pull_are_fetched_anew_before_they_do(
    field_name: str, serve: Serve, images: ImageStore
) -> None:
    # Tokens last 1 s (fetched anew 0.1 s before); the pull takes longer (each blob GET
    # waits 0.3 s, two at a time).
    reg, host = await serve(bearer=True, token_field=field_name, token_ttl=1, blob_delay=0.3)
    image = simple_image(51, sizes=(300_000, 200_000))
    seed(reg, image)
    started = time.monotonic()
    async with fast_client() as client:
        transfer = TransferOptions(part_size=64 << 10, parallel_threshold=64 << 10, window=2)
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, transfer=transfer,
                   jobs=1)
    assert time.monotonic() - started > 1.2
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert reg.expired == 0, "no request went with an expired token"
    assert len(reg.token_requests) >= 2
    assert all(t["auth"] == "" and t["service"] == "odd.example" and t["account"] is None
               for t in reg.token_requests)
    assert {s for t in reg.token_requests for s in t["scope"]} == {"repository:a/b:pull"}


async def test_tokens_the_registry_drops_mid_pull_are_fetched_again_once_for_all(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(bearer=True, revoke_after=5)
    image = simple_image(53, sizes=(300_000, 200_000))
    seed(reg, image)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, transfer=small_parts())
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert reg.expired >= 1
    assert len(reg.token_requests) == 2


async def test_a_blob_that_wants_another_scope_than_the_manifest_gets_a_token_for_both(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(bearer=True, blob_scope="repository:a/b:blobs")
    image = simple_image(54, sizes=(300_000,))
    seed(reg, image)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client, transfer=small_parts())
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert [sorted(t["scope"]) for t in reg.token_requests] == [
        ["repository:a/b:pull"], ["repository:a/b:blobs", "repository:a/b:pull"]]


async def test_a_token_server_that_is_throttled_or_busy_is_asked_again(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(bearer=True, token_throttle=[(429, {"Retry-After": "0"}), (503, {})])
    image = simple_image(55, sizes=(30_000,))
    seed(reg, image)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert len(reg.token_requests) == 3 and not reg.token_throttle


async def test_a_request_refused_while_another_fetched_the_new_token_retries_with_it() -> None:
    """The registry's challenge adds a scope, so a request's scope set keeps the token
    under its own name too; after the token expired and another request (asking for the
    whole set) fetched the new one, the first retries with the new token, not the old."""
    fetched = iter(["t1", "t2", "t3"])

    async def fetch(url: str, params: list[tuple[str, str]], headers: dict[str, str]) -> tuple[int, bytes]:
        return 200, json.dumps({"token": next(fetched)}).encode()

    auth = HostAuth("reg.example", lookup=False)
    challenge = 'Bearer realm="https://auth.example/token",scope="repository:a/b:blobs"'
    mine = frozenset({"repository:a/b:pull"})
    whole = mine | {"repository:a/b:blobs"}
    assert await auth.answer(fetch, challenge, mine)
    assert auth.header(mine) == auth.header(whole) == "Bearer t1"
    assert await auth.answer(fetch, challenge, whole, "Bearer t1")  # t1 expired: t2
    assert await auth.answer(fetch, challenge, mine, "Bearer t1")  # refused with t1 too
    assert auth.header(mine) == "Bearer t2"


@pytest.mark.parametrize("stored", ["config", "helper"])
async def test_an_identity_token_is_exchanged_by_the_oauth2_post(
    stored: str, serve: Serve, images: ImageStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `docker login` to ACR leaves it: an identity token (a refresh token) in
    config.json, or a helper's "<token>" user; it is never sent as a password."""
    reg, host = await serve(bearer=True, users={"someone": "pw"}, refresh_tokens={"rt-1"})
    image = simple_image(56, sizes=(30_000,))
    seed(reg, image)
    config: dict[str, Any] = {"auths": {host: {
        "auth": base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode(),
        "identitytoken": "rt-1"}}}
    if stored == "helper":
        helper = tmp_path / "bin" / "docker-credential-acr"
        helper.parent.mkdir()
        helper.write_text('#!/bin/sh\necho \'{"Username": "<token>", "Secret": "rt-1"}\'\n')
        helper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
        config = {"credHelpers": {host: "acr"}}
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps(config))
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert [t.get("grant") for t in reg.token_requests] == ["refresh_token"]
    assert reg.token_requests[0]["scope"] == ["repository:a/b:pull"]
    assert not any("rt-1" in base64.b64decode(a.split()[1]).decode()
                   for _, a in reg.auth_seen if a.startswith("Basic"))


async def test_a_401_without_a_challenge_is_answered_with_the_pings(
    serve: Serve, images: ImageStore
) -> None:
    """As gcr.io answered: the challenge only on GET /v2/."""
    reg, host = await serve(bearer=True, bare_401=True)
    image = simple_image(57, sizes=(30_000,))
    seed(reg, image)
    async with fast_client() as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
        await copy(f"local:{host}/a/b:1", f"{host}/c/d:1", images, client)
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert reg.manifests[("c/d", "1")][0] == image.manifest
    # The ping's challenge names no scope: the requests' own (a mount's both) are asked.
    assert reg.token_requests[0]["scope"] == ["repository:a/b:pull"]
    assert all("repository:c/d:pull,push" in t["scope"] for t in reg.token_requests[1:])


async def test_a_push_that_mounts_asks_one_token_for_both_repositories(
    serve: Serve, images: ImageStore
) -> None:
    reg, host = await serve(bearer=True, users={"u": "p"})
    image = simple_image(52, sizes=(30_000,))
    seed(reg, image, name="src/repo")
    options = {"credentials": {host: Credentials("u", "p")}}
    async with fast_client(**options) as client:
        await copy(f"{host}/src/repo:1", f"local:{host}/src/repo:1", images, client)
        result = await copy(f"local:{host}/src/repo:1", f"{host}/dst/repo:1", images, client)
    assert set(result.blobs.values()) == {"mounted"}
    mount_scopes = [t["scope"] for t in reg.token_requests if "repository:src/repo:pull" in t["scope"]
                    and "repository:dst/repo:pull,push" in t["scope"]]
    assert mount_scopes, reg.token_requests
    assert all(t["auth"] == Credentials("u", "p").basic() and t["account"] == "u"
               for t in reg.token_requests)


async def test_an_upload_location_on_the_registrys_own_host_spelt_otherwise_gets_the_token(
    serve: Serve, images: ImageStore
) -> None:
    reg, port = await serve(bearer=True, location="upper")
    host = f"localhost:{port.rpartition(':')[2]}"
    await push_and_check(reg, host, images)
    assert any(p.startswith("/v2/a/b/blobs/uploads/") for m, p in reg.log if m == "PATCH")


# --- connections --------------------------------------------------------------------------------

async def test_a_registry_that_closes_every_connection_unannounced_gets_each_request_once(
    serve: Serve, images: ImageStore, images2: ImageStore
) -> None:
    reg, host = await serve(close_each=True)
    image = await push_and_check(reg, host, images)
    # Each chunk and each close was sent once, on a new connection: none broke, so no
    # session was asked where it stood.
    assert not [p for m, p in reg.log if m == "GET" and "/uploads/" in p]
    assert len([m for m, _ in reg.log if m == "PATCH"]) == 3
    tag = next(t for (n, t) in reg.manifests if ":" not in t)
    async with fast_client() as client:
        await copy(f"{host}/a/b:{tag}", f"local:{host}/a/b:1", images2, client,
                   transfer=small_parts())
    await assert_pulled(images2, f"{host}/a/b:1", image)


async def test_blob_bodies_ended_by_closing_the_connection_are_read_to_their_end(
    serve: Serve, images: ImageStore
) -> None:
    """No Content-Length, no chunks: an object store answering as HTTP/1.0 servers do."""
    image = simple_image(61, sizes=(200_000,))
    by_digest = {str(Digest.of(b)): b for b in (image.config, *image.layers)}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ")[1].decode()
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + by_digest[path.split("/")[-2]])
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        storage = Storage()  # only for its URLs: the raw server answers them
        reg, host = await serve(storage=storage,
                                storage_base=f"http://127.0.0.1:{raw.sockets[0].getsockname()[1]}")
        seed(reg, image)
        async with fast_client() as client:
            await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
        await assert_pulled(images, f"{host}/a/b:1", image)
    finally:
        raw.close()


async def test_a_redirect_loop_is_named_as_one(serve: Serve, images: ImageStore) -> None:
    reg, host = await serve()
    reg.redirect_all = f"http://{host}"  # mirror/a/b, then mirror/mirror/a/b, ...
    async with fast_client() as client:
        with pytest.raises(TransportError, match="redirected more than 5 times.*in a loop"):
            await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
    assert len(reg.log) == 6


async def test_a_front_that_redirects_every_request_to_another_registry_is_followed(
    serve: Serve, images: ImageStore
) -> None:
    """As registry.k8s.io sends manifests and blobs to Artifact Registry: the other
    registry's own challenge is answered with an anonymous token of its own; the front's
    credentials never go there."""
    back, back_host = await serve(bearer=True)
    front, host = await serve(redirect_all=f"http://{back_host}", bearer=True, users={"u": "p"})
    image = simple_image(71, sizes=(30_000,))
    seed(back, image, name="mirror/a/b")
    async with fast_client(credentials={host: Credentials("u", "p")}) as client:
        await copy(f"{host}/a/b:1", f"local:{host}/a/b:1", images, client)
        assert await client.tags(host, "a/b") == ["1"]
    await assert_pulled(images, f"{host}/a/b:1", image)
    assert front.token_requests and all(t["auth"] == Credentials("u", "p").basic()
                                        for t in front.token_requests)
    assert back.token_requests and all(t["auth"] == "" for t in back.token_requests)
    assert "repository:mirror/a/b:pull" in back.token_requests[0]["scope"]
    assert not {a for _, a in back.auth_seen} & {f"Bearer {t}" for t in front.tokens}
