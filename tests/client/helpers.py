"""Tiny test images built in the test (random gzip-member layers), and a byte-counting,
fault-injecting HTTP proxy to put between the client and a registry."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import io
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from cas import Digest
from cas.frames import gzip_member
from registry import oci
from registry.client.image_store import ImageStore


def random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def layer_from_chunks(chunks: list[bytes]) -> bytes:
    """A layer made of one gzip member per chunk (as pybuild writes layers)."""
    return b"".join(gzip_member(c, level=1) for c in chunks)


@dataclass
class SampleImage:
    manifest: bytes
    config: bytes
    layers: list[bytes]

    @property
    def digest(self) -> Digest:
        return Digest.of(self.manifest)

    def blob_digests(self) -> set[str]:
        return {str(Digest.of(b)) for b in (self.config, *self.layers)}


def make_image(layer_chunks: list[list[bytes]], *, arch: str = "amd64",
               media_type: str = oci.OCI_MANIFEST, created: str | None = None) -> SampleImage:
    layers = [layer_from_chunks(chunks) for chunks in layer_chunks]
    diff_ids = ["sha256:" + hashlib.sha256(b"".join(c)).hexdigest() for c in layer_chunks]
    config = json.dumps({"architecture": arch, "os": "linux",
                         **({"created": created} if created is not None else {}),
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    docker = media_type == oci.DOCKER_MANIFEST
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": oci.DOCKER_CONFIG if docker else oci.OCI_CONFIG,
                   "digest": str(Digest.of(config)), "size": len(config)},
        "layers": [{"mediaType": oci.DOCKER_LAYER if docker else oci.OCI_LAYER_GZIP,
                    "digest": str(Digest.of(layer)), "size": len(layer)} for layer in layers],
    }
    return SampleImage(json.dumps(doc).encode(), config, layers)


def simple_image(seed: int = 0, sizes: tuple[int, ...] = (200_000, 50_000)) -> SampleImage:
    chunks = [[random_bytes(16_384, seed * 1000 + i * 100 + j) for j in range(max(1, s // 16_384))]
              for i, s in enumerate(sizes)]
    return make_image(chunks)


async def store_image(images: ImageStore, ref: str, image: SampleImage) -> Digest:
    """Put the image's blobs into the local store and record ``ref``."""
    for blob in (image.config, *image.layers):
        await images.store.put(blob)
    return await images.put(ref, image.manifest)


def seed_store(storage: Path, images: dict[str, SampleImage]) -> None:
    """Store each image under its ref in the local store at ``storage`` (from sync code,
    before the processes a test starts use it)."""

    async def seed() -> None:
        async with await ImageStore.open(storage) as opened:
            for ref, image in images.items():
                await store_image(opened, ref, image)

    asyncio.run(seed())


def make_index(children: list[tuple[SampleImage, str]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [{"mediaType": oci.OCI_MANIFEST, "digest": str(img.digest),
                       "size": len(img.manifest), "platform": {"os": "linux", "architecture": arch}}
                      for img, arch in children],
    }).encode()


@dataclass
class Proxy:
    """Forwards everything to ``upstream``; counts blob body bytes; can break or corrupt.

    ``fault(request, body_so_far_len, chunk) -> chunk | None``: None drops the connection;
    a fault may also be a coroutine function (to hold a body back until something happened).
    ``cut_body(request) -> n | None``: forward only the first ``n`` bytes of the request's
    body, then break the connections both ways (an upload killed half-way).
    """

    upstream: str
    fault: Callable[[web.Request, int, bytes], bytes | Awaitable[bytes | None] | None] | None = None
    drop_request: Callable[[web.Request], bool] | None = None  # True: cut before forwarding
    cut_body: Callable[[web.Request], int | None] | None = None
    blob_delay: float = 0.0  # seconds each blob GET waits before it is forwarded (latency)
    no_ranges: bool = False  # a registry that ignores Range: 200 and the whole blob
    blob_gets_in_flight: int = 0
    max_blob_gets_in_flight: int = 0
    blob_bytes: int = 0
    request_bytes: int = 0  # request bodies forwarded (what a push sent)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, Range
    session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)

        async def close(_: web.Application) -> None:
            if self.session is not None:
                await self.session.close()

        app.on_cleanup.append(close)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.session is None:
            self.session = aiohttp.ClientSession(auto_decompress=False)
        self.log.append((request.method, request.path,
                         request.headers.get("Range", "") or request.headers.get("Content-Range", "")))
        if self.drop_request is not None and self.drop_request(request):
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        dropped = ("host", "transfer-encoding", "connection") + (("range",) if self.no_ranges else ())
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        if request.method == "GET" and "/blobs/sha" in request.path:
            self.blob_gets_in_flight += 1
            self.max_blob_gets_in_flight = max(self.max_blob_gets_in_flight,
                                               self.blob_gets_in_flight)
            try:
                await asyncio.sleep(self.blob_delay)
                return await self._forward(request, headers)
            finally:
                self.blob_gets_in_flight -= 1
        return await self._forward(request, headers)

    async def _forward(self, request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read()
        self.request_bytes += len(body)
        cut = self.cut_body(request) if self.cut_body is not None else None
        if cut is not None:
            await self._forward_cut(request, headers, body[:cut])
            return web.Response(status=500)  # never sent: the connection is gone
        async with self.session.request(request.method, self.upstream + request.path_qs,
                                        headers=headers, data=io.BytesIO(body) if body else None,
                                        allow_redirects=False) as up:
            out_headers = {k: v for k, v in up.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection", "content-encoding")
                           and not (self.no_ranges and k.lower() == "accept-ranges")}
            if "Location" in out_headers:
                out_headers["Location"] = out_headers["Location"].replace(self.upstream, "")
            resp = web.StreamResponse(status=up.status, headers=out_headers)
            await resp.prepare(request)
            is_blob = request.method == "GET" and "/blobs/sha" in request.path
            sent = 0
            async for chunk in up.content.iter_chunked(16_384):
                if is_blob and self.fault is not None:
                    changed = self.fault(request, sent, chunk)
                    if inspect.isawaitable(changed):
                        changed = await changed
                    if changed is None:
                        assert request.transport is not None
                        request.transport.close()
                        return resp
                    chunk = changed
                if is_blob:
                    self.blob_bytes += len(chunk)
                sent += len(chunk)
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def _forward_cut(self, request: web.Request, headers: dict[str, str], head: bytes) -> None:
        """Send ``head`` upstream under the full Content-Length, then abort both sides."""
        assert self.session is not None

        async def body() -> Any:
            yield head
            await asyncio.sleep(0.05)  # let the registry take in what arrived
            raise ConnectionAbortedError("upload killed half-way")

        with contextlib.suppress(aiohttp.ClientError, ConnectionAbortedError):
            async with self.session.request(request.method, self.upstream + request.path_qs,
                                            headers=headers, data=body(),
                                            allow_redirects=False) as up:
                await up.read()
        assert request.transport is not None
        request.transport.close()


ONE_LAYER_CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def one_layer_registry(blob: bytes, answer: Callable[[web.Request, bytes], web.StreamResponse],
                       *, declared: int | None = None) -> web.Application:
    """A registry holding one image, ``a/b:1``, of one gzip layer ``blob`` (its manifest
    declares ``declared`` bytes for it, default its length): ``/v2/``, the manifest, 404
    for anything else; each request for a blob (the config or the layer: HEAD or GET) is
    answered by ``answer(request, its bytes)``, the part the test makes misbehave."""
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_of(ONE_LAYER_CONFIG), "size": len(ONE_LAYER_CONFIG)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256_of(blob), "size": len(blob) if declared is None else declared}],
    }).encode()
    blobs = {sha256_of(ONE_LAYER_CONFIG): ONE_LAYER_CONFIG, sha256_of(blob): blob}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/v2/":
            return web.json_response({})
        if path == "/v2/a/b/manifests/1":
            return web.Response(body=manifest, content_type=oci.OCI_MANIFEST,
                                headers={"Docker-Content-Digest": sha256_of(manifest)})
        data = blobs.get(path.rsplit("/", 1)[-1])
        if data is None or "/blobs/" not in path:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        return answer(request, data)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
