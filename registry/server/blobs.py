"""Blobs: ``GET``/``HEAD``/``DELETE /v2/<name>/blobs/<digest>`` (spec end-2, end-10).

A blob is readable in a repository only if ``cas`` links it to that repository's holder;
the bytes are stored once. GET streams ``store.segments()``: raw on-disk segments go out
with ``sendfile`` (zero-copy), decompressed segments are written; nothing buffers a whole
blob. Single ``Range`` requests get 206 with ``Content-Range``; unsatisfiable ones 416.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from cas import BlobUnknown, Digest, InvalidRange

from ..errors import BLOB_UNKNOWN, UNSUPPORTED
from ..names import parse_digest
from .httputil import parse_range
from .state import BYTES_SENT, REGISTRY, Registry, holder

__all__ = ["delete_blob", "get_blob", "stat_in_repo"]


async def stat_in_repo(reg: Registry, name: str, digest: Digest) -> int:
    """The blob's size if it is readable in ``name``; BLOB_UNKNOWN (404) otherwise."""
    if not await reg.store.is_linked(holder(name), digest):
        raise BLOB_UNKNOWN(
            f"blob {digest} is not in repository {name!r}", detail={"digest": str(digest)}
        )
    info = await reg.store.stat(digest)
    if info is None:
        raise BLOB_UNKNOWN(f"blob {digest} is not in the store", detail={"digest": str(digest)})
    return int(info.size)


def _not_modified(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if not header:
        return False
    return any(t.strip() in (etag, etag.strip('"'), "*") for t in header.split(","))


async def get_blob(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    reg = request.app[REGISTRY]
    d = parse_digest(digest)
    size = await stat_in_repo(reg, name, d)
    etag = f'"{d}"'
    headers = {
        "Docker-Content-Digest": str(d),
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Cache-Control": "max-age=31536000",
    }
    if _not_modified(request, etag):
        return web.Response(status=304, headers=headers)
    wanted = parse_range(request.headers.get("Range"), size)
    if wanted is None:
        offset, length, status = 0, size, 200
    else:
        offset, length = wanted
        status = 206
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = length
    if request.method == "HEAD":
        return resp
    await resp.prepare(request)
    try:
        await _send_segments(request, reg, d, offset, length, resp)
    except (BlobUnknown, InvalidRange):
        # Deleted between stat and read: the status line is gone, so cut the connection;
        # the client sees a short body and retries.
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


async def _send_segments(
    request: web.Request,
    reg: Registry,
    digest: Digest,
    offset: int,
    length: int,
    resp: web.StreamResponse,
) -> None:
    if length == 0:
        return
    loop = asyncio.get_running_loop()
    async for seg in reg.store.segments(digest, offset, length):
        if seg.path is None:
            await resp.write(seg.data)
            continue
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        f = await asyncio.to_thread(open, seg.path, "rb")
        try:
            try:
                # loop.sendfile waits for the transport's buffer (headers, earlier
                # segments) to drain, then hands the file range to the kernel.
                await loop.sendfile(transport, f, seg.offset, seg.length)
            except NotImplementedError:
                await _copy_file(resp, f, seg.offset, seg.length)
        finally:
            await asyncio.to_thread(f.close)
        request[BYTES_SENT] = request.get(BYTES_SENT, 0) + seg.length


async def _copy_file(resp: web.StreamResponse, f: Any, offset: int, length: int) -> None:
    chunk = 1 << 20
    while length > 0:
        data = await asyncio.to_thread(os.pread, f.fileno(), min(chunk, length), offset)
        if not data:
            raise ConnectionResetError("segment file shorter than its recipe says")
        await resp.write(data)
        offset += len(data)
        length -= len(data)


async def delete_blob(request: web.Request, name: str, digest: str) -> web.Response:
    reg = request.app[REGISTRY]
    if not reg.config.delete_blobs:
        raise UNSUPPORTED("blob deletion is disabled on this registry (delete.blobs: false)")
    d = parse_digest(digest)
    if not await reg.store.unlink(holder(name), d):
        raise BLOB_UNKNOWN(f"blob {d} is not in repository {name!r}", detail={"digest": str(d)})
    return web.Response(status=202, headers={"Content-Length": "0"})
