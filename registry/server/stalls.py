"""Cutting off a client that stopped reading an answer.

An answer written through the transport (decompressed pieces, multipart heads, TLS)
waits for the client whenever the transport's buffer is full; a client that never
reads again would hold its connection, its handler and the data in that buffer for as
long as it stays connected (100 such connections held ~160 MB). :func:`cut_off_when_stalled`
watches the buffer while an answer goes out: when it stays full and unchanged for
:data:`STALL_SECONDS` (the client took nothing), the connection is aborted, and the
waiting write fails with a ConnectionError (the middleware logs the client as gone).

Any progress, however slow, changes the buffer: a slow reader is never cut off, only a
silent one. The sendfile paths of :mod:`.blobs` do not fill the buffer; the one in
worker threads has its own poll with the same limit, and asyncio's own ``loop.sendfile``
(TLS) is watched by :func:`sendfile_unless_stalled`; both through the bytes the client's
TCP has acknowledged (:func:`bytes_acked`: the kernel's send queue stays as full for a
slow reader as for a silent one).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator
from typing import IO, Any

from aiohttp import web

__all__ = ["STALL_SECONDS", "bytes_acked", "cut_off_when_stalled", "sendfile_unless_stalled"]

STALL_SECONDS = 30.0


@contextlib.asynccontextmanager
async def cut_off_when_stalled(request: web.Request) -> AsyncIterator[None]:
    """While the block runs, abort ``request``'s connection once its write buffer has
    stayed non-empty and unchanged for :data:`STALL_SECONDS`."""
    transport = request.transport
    if transport is None:
        yield
        return
    loop = asyncio.get_running_loop()
    stall = STALL_SECONDS
    every = min(1.0, stall / 4)
    last_size, since = -1, loop.time()
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal last_size, since, handle
        if transport.is_closing():
            return
        size, now = transport.get_write_buffer_size(), loop.time()
        if size == 0 or size != last_size:
            last_size, since = size, now
        elif now - since >= stall:
            # abort, not close: close would first wait for the buffer to drain, which
            # a client that reads nothing never lets happen.
            transport.abort()
            return
        handle = loop.call_later(every, check)

    handle = loop.call_later(every, check)
    try:
        yield
    finally:
        handle.cancel()


def bytes_acked(sock: Any) -> int | None:
    """``tcpi_bytes_acked`` of Linux's ``struct tcp_info`` (at byte 120, since 4.1);
    None where the kernel does not say."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 128)
    except (OSError, AttributeError):
        return None
    return int.from_bytes(info[120:128], sys.byteorder) if len(info) >= 128 else None


async def sendfile_unless_stalled(transport: Any, f: IO[bytes], offset: int, length: int) -> int:
    """``loop.sendfile(transport, f, offset, length)``; once the client has acknowledged
    no byte for :data:`STALL_SECONDS`, the connection is aborted and ConnectionResetError
    raised. Without this, a client that stops reading holds its handler, the pack file
    and the connection for as long as it stays connected: aborting alone would not end
    the wait, which asyncio keeps on the socket's writability."""
    loop = asyncio.get_running_loop()
    sending = asyncio.ensure_future(loop.sendfile(transport, f, offset, length))
    sock = transport.get_extra_info("socket")
    try:
        last, since = None if sock is None else bytes_acked(sock), loop.time()
        if last is None:
            return await sending
        while True:
            done, _ = await asyncio.wait({sending}, timeout=min(1.0, STALL_SECONDS / 4))
            if done:
                return sending.result()
            acked, now = bytes_acked(sock), loop.time()
            if acked != last:
                last, since = acked, now
            elif now - since >= STALL_SECONDS:
                await _stop(sending)
                transport.abort()
                raise ConnectionResetError(f"the client stopped reading for {STALL_SECONDS:g} s")
    finally:
        await _stop(sending)


async def _stop(sending: asyncio.Future[int]) -> None:
    """End asyncio's sendfile before its socket is closed: its wait for the socket is
    removed only while the socket is open (closed first, the descriptor's number stays
    registered, and the next connection given that number fails)."""
    if not sending.done():
        sending.cancel()
        await asyncio.wait({sending})
