"""Cutting off a client that stopped reading an answer.

An answer written through the transport (decompressed pieces, multipart heads, TLS)
waits for the client whenever the transport's buffer is full; a client that never
reads again would hold its connection, its handler and the data in that buffer for as
long as it stays connected (100 such connections held ~160 MB). :func:`cut_off_when_stalled`
watches the buffer while an answer goes out: when it stays full and unchanged for
:data:`STALL_SECONDS` (the client took nothing), the connection is aborted, and the
waiting write fails with a ConnectionError (the middleware logs the client as gone).

Any progress, however slow, changes the buffer: a slow reader is never cut off, only a
silent one. The sendfile paths of :mod:`.blobs` do not fill the buffer; the one in a
worker thread has its own poll with the same limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

__all__ = ["STALL_SECONDS", "cut_off_when_stalled"]

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
