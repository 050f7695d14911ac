"""On asyncio's own event loop (``--event-loop asyncio``) a blob's stored pieces go out
with ``os.sendfile`` in worker threads, as under uvloop. A client that stops reading is
cut off after the stall limit there too; before, its handler, the pack file and the
connection stayed for as long as the client stayed connected (20 such clients: 20
handlers and 40 descriptors, for ever). A client that reads slowly is never cut off: it
frees too little of the socket's buffer to make it writable, but the bytes it
acknowledges show that it reads."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from registry.server import stalls

from .helpers import push_blob, stalled_get


async def test_a_client_that_stops_reading_a_sendfile_blob_is_cut_off(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("asyncio")
    monkeypatch.setattr(stalls, "STALL_SECONDS", 1)
    data = os.urandom(16 << 20)  # incompressible: stored raw, sent with sendfile
    digest = await push_blob(client, "stall", data)
    path = f"/v2/stall/blobs/{digest}"
    got, closed = await asyncio.to_thread(stalled_get, client.port, path, stall=3)
    assert closed, "the server still holds the connection of a client that reads nothing"
    assert got < len(data)
    # A slow reader is not cut off: it gets everything (and the connection cut off
    # before left nothing behind that breaks the next ones).
    got, closed = await asyncio.to_thread(stalled_get, client.port, path, stall=3, trickle=0.2)
    assert got > len(data)  # the blob and the response head
