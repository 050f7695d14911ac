"""pull against a registry whose manifests lie about their blobs: a declared size the
blob does not have (up to 2**62 bytes), answered honestly or echoed by the blob's HEAD.
The pull fails naming both sizes, in bounded memory, and leaves the store as it was."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient
from registry.client.transfer import BlobError

from .helpers import ONE_LAYER_CONFIG, one_layer_registry, random_bytes, sha256_of


def _registry(blob: bytes, declared: int, head_echoes: bool) -> web.Application:
    """One repository ``a/b:1`` whose manifest declares ``declared`` bytes for ``blob``;
    the blob's HEAD answers its true length, or (``head_echoes``) the declared one."""

    def answer(request: web.Request, data: bytes) -> web.Response:
        if request.method == "HEAD":
            size = declared if head_echoes and data is blob else len(data)
            return web.Response(headers={"Content-Length": str(size), "Accept-Ranges": "bytes"})
        first, _, last = request.headers.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
        start = int(first)
        end = min(int(last) if last else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        return web.Response(status=206 if "Range" in request.headers else 200,
                            body=data[start:end + 1],
                            headers={"Content-Range": f"bytes {start}-{end}/{len(data)}",
                                     "Accept-Ranges": "bytes"})

    return one_layer_registry(blob, answer, declared=declared)


@pytest.mark.parametrize("head_echoes", [False, True], ids=["head-honest", "head-echoes"])
async def test_a_declared_size_the_blob_does_not_have_fails_in_bounded_memory(
    aiohttp_server: Any, images: ImageStore, tmp_path: Path, head_echoes: bool,
) -> None:
    blob = random_bytes(300_000, 7)
    declared = 1 << 62
    server = await aiohttp_server(_registry(blob, declared, head_echoes))
    host = f"127.0.0.1:{server.port}"
    client = RegistryClient(ClientOptions(retries=1, backoff=0.01))
    tracemalloc.start()
    try:
        with pytest.raises(BlobError) as caught:
            await copy_image(parse_endpoint(f"{host}/a/b:1"), parse_endpoint(f"local:{host}/a/b:1"),
                             images, client, Progress("quiet"), CopyOptions())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await client.close()
    message = str(caught.value)
    assert sha256_of(blob) in message
    # The HEAD tells, or else the first ranged answer's Content-Range does.
    assert f"the registry holds {len(blob)} bytes of it, the manifest declares {declared}" in message
    # A list of the 2**62 bytes' parts would take terabytes; the pull took little.
    assert peak < 64 << 20, peak
    digest = Digest.parse(sha256_of(blob))
    await images.close()  # it waits for what the stopped blobs keep or drop
    async with await ImageStore.open(images.store.root) as again:
        assert await again.store.stat(digest) is None
        assert await again.pending_pull(digest) is None  # nothing kept for a resume
        # The config, stopped beside it, is stored, kept for a resume or dropped: never
        # left open unrecorded.
        kept = await again.pending_pull(Digest.parse(sha256_of(ONE_LAYER_CONFIG))) is not None
        assert (await again.store.stats()).open_ingests == int(kept)
        assert (await again.store.fsck()).ok
