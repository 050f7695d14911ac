"""pull against a registry whose 206 answers are not the range asked for: another start,
a shorter range, no Content-Range, a body longer than its Content-Range. The pull fails at
the first such answer, naming it, before any of its bytes is read; nothing is stored under
the blob's digest. A registry that answers a ranged GET with the whole blob (200) is still
read (as before)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient, WrongRange
from registry.client.transfer import TransferOptions

from .helpers import one_layer_registry, random_bytes, sha256_of

BLOB = random_bytes(300_000, 11)
PARTS = TransferOptions(part_size=64 << 10, parallel_threshold=100_000, retries=1,
                        recipes=False)


def _registry(mode: str) -> web.Application:
    """``a/b:1``, one layer; ranged GETs are answered as ``mode`` says."""

    def answer(request: web.Request, data: bytes) -> web.Response:
        if request.method == "HEAD":
            # A registry that ignores Range says so (no Accept-Ranges), as the client needs.
            # ("whole-says-ranges": one that says it takes them all the same).
            ranges = {} if mode == "whole" else {"Accept-Ranges": "bytes"}
            return web.Response(headers={"Content-Length": str(len(data)), **ranges})
        asked = request.headers.get("Range")
        if asked is None or mode in ("whole", "whole-says-ranges"):
            return web.Response(body=data)
        first, _, last = asked.removeprefix("bytes=").partition("-")
        start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        body = data[start:end + 1]
        if mode == "from-zero" and start:  # every part is the blob's first bytes
            body = data[:end + 1 - start]
            headers["Content-Range"] = f"bytes 0-{end - start}/{len(data)}"
        elif mode == "short" and start:
            body = data[start:end - 99]
            headers["Content-Range"] = f"bytes {start}-{end - 100}/{len(data)}"
        elif mode == "no-header" and start:
            del headers["Content-Range"]
        elif mode == "longer-body" and start:
            body = data[start:end + 101]
        return web.Response(status=206, body=body, headers=headers)

    return one_layer_registry(BLOB, answer)


async def _pull(aiohttp_server: Any, images: ImageStore, mode: str) -> Any:
    server = await aiohttp_server(_registry(mode))
    host = f"127.0.0.1:{server.port}"
    client = RegistryClient(ClientOptions(retries=1, backoff=0.01))
    try:
        return await copy_image(parse_endpoint(f"{host}/a/b:1"), parse_endpoint(f"local:{host}/a/b:1"),
                                images, client, Progress("quiet"), CopyOptions(transfer=PARTS))
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("mode", "answered", "why"),
    [
        ("from-zero", "'bytes 0-65535/300000'", "it starts at byte 0, not 65536"),
        ("short", "'bytes 65536-130971/300000'", "it ends at byte 130971, not 131071"),
        ("no-header", "none", "not one range"),
        ("longer-body", "'bytes 65536-131071/300000'", "with a body of 65636 bytes, not 65536"),
    ],
)
async def test_a_206_of_another_range_fails_at_once_naming_it(
    aiohttp_server: Any, images: ImageStore, mode: str, answered: str, why: str,
) -> None:
    with pytest.raises(WrongRange) as caught:
        await _pull(aiohttp_server, images, mode)
    message = str(caught.value)
    assert sha256_of(BLOB) in message
    assert "asked for Range bytes=" in message
    assert f"answered 206 with Content-Range {answered}" in message
    assert why in message
    digest = Digest.parse(sha256_of(BLOB))
    assert await images.store.stat(digest) is None
    assert (await images.store.fsck()).ok


async def test_a_whole_blob_answer_to_a_range_is_still_read(
    aiohttp_server: Any, images: ImageStore, tmp_path: Path,
) -> None:
    result = await _pull(aiohttp_server, images, "whole")
    assert result is not None
    assert await images.store.read_bytes(Digest.parse(sha256_of(BLOB))) == BLOB
    assert (await images.store.fsck()).ok


async def test_the_right_ranges_are_read(aiohttp_server: Any, images: ImageStore) -> None:
    await _pull(aiohttp_server, images, "right")
    assert await images.store.read_bytes(Digest.parse(sha256_of(BLOB))) == BLOB


async def test_a_registry_that_says_it_takes_ranges_and_answers_whole_blobs_is_read_in_one_stream(
    aiohttp_server: Any, images: ImageStore,
) -> None:
    """Its HEAD says ``Accept-Ranges: bytes``, its ranged GETs get the whole blob (200):
    the pull goes on in one stream (it used to fail, and fail again when run again)."""
    result = await _pull(aiohttp_server, images, "whole-says-ranges")
    assert result is not None
    assert await images.store.read_bytes(Digest.parse(sha256_of(BLOB))) == BLOB
    assert (await images.store.fsck()).ok
