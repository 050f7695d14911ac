"""Blobs: ``GET``/``HEAD``/``DELETE /v2/<name>/blobs/<digest>`` (spec end-2, end-10).

A blob is readable in a repository only if ``cas`` links it to that repository's holder;
the bytes are stored once. GET streams ``store.segments()``: raw on-disk segments go out
with ``sendfile`` (zero-copy), decompressed segments are written; nothing buffers a whole
blob. A ``Range`` of one range gets 206 with ``Content-Range``, of several a 206
``multipart/byteranges`` (zstd:chunked partial pulls ask for up to 1,024); unsatisfiable
ones 416. A client that stops reading is cut off (:mod:`.stalls`).
``If-None-Match`` and ``If-Range`` are read as :mod:`.conditional` says: a
range whose ``If-Range`` does not name this blob is ignored (200, the whole blob).
With ``storage_redirect`` on, a GET (without ``Range`` or of one range) or HEAD of a blob
stored as one whole S3 object is answered with a 307 to a URL of that object presigned
for that method, as Distribution's blob server redirects both (the s3 driver's ``URLFor``
signs the request's method); the client sends its ``Range`` on to the bucket.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from aiohttp import web

from cas import BlobUnknown, Digest, InvalidRange, StoreCorrupt
from cas.holders import repository_holder

from ..errors import BLOB_UNKNOWN, UNSUPPORTED
from ..names import parse_digest
from . import stalls
from .conditional import if_none_match, if_range_holds, none_match
from .httputil import ClientGone, parse_ranges
from .renewals import may_push, renew_blob_link
from .state import BYTES_SENT, REGISTRY, Registry

__all__ = ["delete_blob", "get_blob", "stat_in_repo"]


async def stat_in_repo(reg: Registry, name: str, digest: Digest) -> int:
    """The blob's size if it is readable in ``name``; BLOB_UNKNOWN (404) otherwise."""
    if not await reg.store.is_linked(repository_holder(name), digest):
        raise BLOB_UNKNOWN(
            f"blob {digest} is not in repository {name!r}", detail={"digest": str(digest)}
        )
    info = await reg.store.stat(digest)
    if info is None:
        raise BLOB_UNKNOWN(f"blob {digest} is not in the store", detail={"digest": str(digest)})
    return int(info.size)


async def get_blob(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    reg = request.app[REGISTRY]
    d = parse_digest(digest)
    size = await stat_in_repo(reg, name, d)
    if request.method == "HEAD" and not reg.config.read_only and may_push(request, name):
        # A HEAD before a push: kept for the upload grace (renewals.py).
        await renew_blob_link(reg, name, d)
    etag = f'"{d}"'
    headers = {
        "Docker-Content-Digest": str(d),
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Cache-Control": "max-age=31536000",
        "Docker-Distribution-API-Version": "registry/2.0",
    }
    if none_match(if_none_match(request), str(d)):
        return web.Response(status=304, headers=headers)
    wanted = None
    if if_range_holds(request.headers.get("If-Range"), str(d)):
        wanted = parse_ranges(request.headers.get("Range"), size)
    if reg.config.storage_redirect and _bucket_can_answer(request, wanted):
        # As Distribution's storage.redirect: the client GETs (HEADs) the blob in the
        # bucket, when the blob is one whole object there (cas: Store.redirect_url).
        redirect_url = getattr(reg.store, "redirect_url", None)
        url = await redirect_url(d, method=request.method) if redirect_url is not None else None
        if url is not None:
            return web.Response(status=307, headers={
                "Location": url, "Docker-Content-Digest": str(d), "Content-Length": "0",
                "Docker-Distribution-API-Version": "registry/2.0"})
    parts: list[tuple[bytes, int, int]] = []  # multipart: (part head, offset, length)
    if wanted is None:
        offset, length, status = 0, size, 200
    elif len(wanted) == 1:
        (offset, length), = wanted
        status = 206
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
    else:
        parts, tail = _multipart(wanted, size, headers)
        status, length = 206, sum(len(head) + n for head, _, n in parts) + len(tail)
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_length = length
    if request.method == "HEAD":
        return resp
    await resp.prepare(request)
    try:
        async with stalls.cut_off_when_stalled(request):
            if not parts:
                await _send_segments(request, reg, d, offset, length, resp)
            else:
                for head, offset, n in parts:
                    await resp.write(head)
                    await _send_segments(request, reg, d, offset, n, resp)
                await resp.write(tail)
    except (BlobUnknown, InvalidRange):
        # Deleted between stat and read: the status line is gone, so cut the connection;
        # the client sees a short body and retries.
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


def _bucket_can_answer(request: web.Request, wanted: list[tuple[int, int]] | None) -> bool:
    """Whether the bucket answers this request as the replica would, once redirected: a
    HEAD, a GET without ``Range``, or of one satisfiable range (the client sends its
    ``Range`` on to the object, which is the blob's bytes, so S3 serves the same span).
    Several ranges (S3 answers those with the whole object) and a range under ``If-Range``
    (S3 would compare it with its own ETag, not the digest) stay with the replica."""
    header = request.headers.get("Range")
    if request.method == "HEAD" or header is None:
        return True
    return wanted is not None and len(wanted) == 1 and "," not in header and "If-Range" not in request.headers


def _multipart(
    spans: list[tuple[int, int]], size: int, headers: dict[str, str]
) -> tuple[list[tuple[bytes, int, int]], bytes]:
    """A ``multipart/byteranges`` answer to several ranges (RFC 9110 14.6), one part per
    span in the order asked, laid out as Go's ``http.ServeContent`` writes it (CNCF
    Distribution's): each part's head, with its offset and length, and the closing line.
    ``headers`` gets the answer's Content-Type."""
    boundary = secrets.token_hex(30)
    headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    parts = []
    for i, (offset, length) in enumerate(spans):
        head = (
            ("\r\n" if i else "") + f"--{boundary}\r\n"
            f"Content-Range: bytes {offset}-{offset + length - 1}/{size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append((head.encode(), offset, length))
    return parts, f"\r\n--{boundary}--\r\n".encode()


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
    async for seg in reg.store.segments(digest, offset, length):
        if seg.path is None:
            await resp.write(seg.data)
        else:
            await _send_file_range(request, resp, seg.path, seg.offset, seg.length)
        request[BYTES_SENT] = request.get(BYTES_SENT, 0) + seg.length


async def _send_file_range(
    request: web.Request, resp: web.StreamResponse, path: Any, offset: int, length: int
) -> None:
    """Send ``path[offset:offset+length]`` on the response's connection, zero-copy if we can.

    - plain TCP (either loop): ``os.sendfile`` in worker threads on a *duplicate* of the
      socket descriptor (made before the hop to the thread), once the transport's buffer
      is empty; the duplicate keeps the socket alive even if the loop closes the
      connection meanwhile (:func:`_sendfile_in_threads`). Not asyncio's
      ``loop.sendfile``: it calls ``os.sendfile`` on the loop's thread, which waits for
      the disk while a pack is not cached (300 ms and more per call: every other client
      waited too).
    - TLS: read and write through the transport (the kernel cannot encrypt for us):
      asyncio's ``loop.sendfile`` reads the file in worker threads; other loops copy.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientGone("connection closed")
    loop = asyncio.get_running_loop()
    # A local open is one quick syscall; done in a worker thread, a cancellation during
    # the hop would leave the opened file behind.
    f = open(path, "rb")  # noqa: SIM115, ASYNC230 - one quick syscall; closed in the finally below
    try:
        tls = transport.get_extra_info("sslcontext") is not None
        if tls:
            try:
                sent = await stalls.sendfile_unless_stalled(transport, f, offset, length)
            except NotImplementedError:
                pass
            except (BrokenPipeError, ConnectionResetError) as exc:  # writing to the client
                raise ClientGone(str(exc)) from exc
            else:
                if sent < length:  # asyncio stops at the end of the file, silently
                    raise StoreCorrupt("a pack file is shorter than the blob's recipe says")
                return
        sock = None if tls else transport.get_extra_info("socket")
        if sock is None:
            await _copy_file(resp, f, offset, length)
            return
        while transport.get_write_buffer_size() > 0:
            await asyncio.sleep(0.0005)
            if transport.is_closing():
                raise ClientGone("connection closed")
        if transport.is_closing():
            raise ClientGone("connection closed")
        # Both descriptors are duplicated here, on the loop's thread, while the connection
        # is known open: in the worker thread the loop may have closed the client's socket
        # meanwhile (a client that hung up), and its number may already name another
        # client's connection.
        out = os.dup(sock.fileno())
        try:
            src = os.dup(f.fileno())
        except BaseException:
            os.close(out)
            raise
        await _sendfile_in_threads(loop, out, src, offset, length, sock)
    finally:
        f.close()


async def _sendfile_in_threads(
    loop: asyncio.AbstractEventLoop, out: int, src: int, offset: int, length: int,
    probe: Any = None,
) -> None:
    """Send ``length`` bytes of ``src`` from ``offset`` to the socket ``out`` (duplicates
    this function owns and closes, once no worker uses them), as much as the socket takes
    at a time in a worker thread. While the client's buffer is full it waits here, on the
    loop: a worker thread waiting for a slow client is a thread no other pull gets (ten
    slow readers held every worker, and stalled every other pull for half a minute).

    A client that reads slowly frees too little of the socket's buffer to make it
    writable again for a long time: the bytes it acknowledged (``probe``, the connection's
    socket, read on the loop's thread) show that it still reads; only a silent one is
    cut off."""
    worker: asyncio.Future[int] | None = None
    try:
        stalled_since: float | None = None
        acked = None if probe is None else stalls.bytes_acked(probe)
        while length > 0:
            # Shielded: a cancelled task leaves the worker to finish before the close.
            worker = loop.run_in_executor(None, _sendfile_blocking, out, src, offset, length)
            sent = await asyncio.shield(worker)
            if sent:
                offset, length, stalled_since = offset + sent, length - sent, None
                continue
            now = loop.time()
            was, acked = acked, None if probe is None else stalls.bytes_acked(probe)
            if stalled_since is None or acked != was:
                stalled_since = now
            left = stalls.STALL_SECONDS - (now - stalled_since)
            if left <= 0:
                raise ClientGone(f"it stopped reading for {stalls.STALL_SECONDS:g} s")
            await _until_writable(loop, out, min(left, 1.0))
    finally:
        if worker is not None and not worker.done():
            worker.add_done_callback(lambda done: _close_after(done, out, src))
        else:
            os.close(out)
            os.close(src)


def _close_after(worker: asyncio.Future[int], *fds: int) -> None:
    if not worker.cancelled():
        worker.exception()  # its task was cancelled: nobody else will look
    for fd in fds:
        os.close(fd)


async def _until_writable(loop: asyncio.AbstractEventLoop, sock: int, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait (up to ``timeout`` s) until ``sock`` takes more, or has failed (the next
    send says how); whether it did."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(sock, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_writer(sock)
    return True


def _sendfile_blocking(out: int, file_fd: int, offset: int, length: int) -> int:
    """Send what the non-blocking socket ``out`` takes now of ``length`` bytes of
    ``file_fd`` from ``offset``; how many (0: its buffer is full). Runs in a worker
    thread: reading a pack that is not cached may wait for the disk."""
    total = 0
    while length > 0:
        try:
            sent = os.sendfile(out, file_fd, offset, min(length, 1 << 30))
        except BlockingIOError:
            break
        except (BrokenPipeError, ConnectionError) as exc:
            raise ClientGone(str(exc)) from exc
        if sent == 0:
            raise StoreCorrupt("a pack file is shorter than the blob's recipe says")
        offset, length, total = offset + sent, length - sent, total + sent
    return total


async def _copy_file(resp: web.StreamResponse, f: Any, offset: int, length: int) -> None:
    chunk = 1 << 20
    while length > 0:
        data = await asyncio.to_thread(os.pread, f.fileno(), min(chunk, length), offset)
        if not data:
            raise StoreCorrupt("a pack file is shorter than the blob's recipe says")
        await resp.write(data)
        offset += len(data)
        length -= len(data)


async def delete_blob(request: web.Request, name: str, digest: str) -> web.Response:
    reg = request.app[REGISTRY]
    if not reg.config.delete_blobs:
        raise UNSUPPORTED("blob deletion is disabled on this registry (delete.blobs: false)")
    d = parse_digest(digest)
    if await reg.meta.get_manifest(name, str(d)) is not None:
        raise UNSUPPORTED(
            f"{d} is a manifest of {name!r}: delete it with DELETE /v2/{name}/manifests/{d}",
            detail={"digest": str(d)},
        )
    if not await reg.store.unlink(repository_holder(name), d):
        raise BLOB_UNKNOWN(f"blob {d} is not in repository {name!r}", detail={"digest": str(d)})
    return web.Response(status=202, headers={"Content-Length": "0"})
