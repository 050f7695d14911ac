"""On asyncio's own event loop (``--event-loop asyncio``) a blob's stored pieces go out
with ``loop.sendfile``. A client that stops reading is cut off after the stall limit
there too; before, its handler, the pack file and the connection stayed for as long as
the client stayed connected (20 such clients: 20 handlers and 40 descriptors, for ever).
A client that reads slowly is never cut off."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest

from registry.server import stalls

from .helpers import push_blob


def _get(port: int, path: str, *, stall: float, trickle: float = 0.0) -> tuple[int, bool]:
    """GET ``path``; read nothing for ``stall`` seconds, or (``trickle``) 4 KiB every
    ``trickle`` seconds for that long; then read what is there. Returns the bytes read and
    whether the server had closed the connection."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.settimeout(10)  # a server that stopped answering fails the test, not hangs it
    total = 0
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        end = time.monotonic() + stall
        while time.monotonic() < end:
            time.sleep(trickle or stall)
            if trickle:
                total += len(s.recv(4096))
        s.settimeout(2)
        while True:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                return total, False
            except ConnectionResetError:
                return total, True
            if not chunk:
                return total, True
            total += len(chunk)
    finally:
        s.close()


async def test_a_client_that_stops_reading_a_sendfile_blob_is_cut_off(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("asyncio")
    monkeypatch.setattr(stalls, "STALL_SECONDS", 1)
    data = os.urandom(16 << 20)  # incompressible: stored raw, sent with sendfile
    digest = await push_blob(client, "stall", data)
    path = f"/v2/stall/blobs/{digest}"
    got, closed = await asyncio.to_thread(_get, client.port, path, stall=3)
    assert closed, "the server still holds the connection of a client that reads nothing"
    assert got < len(data)
    # A slow reader is not cut off: it gets everything (and the connection cut off
    # before left nothing behind that breaks the next ones).
    got, closed = await asyncio.to_thread(_get, client.port, path, stall=3, trickle=0.2)
    assert got > len(data)  # the blob and the response head
