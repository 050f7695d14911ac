"""Large file and CPU work of the registry runs off the event loop: one blocked callback
stalls every other client of the server. Each test records the thread the work ran on
(never a timing) and asserts it is not the loop's."""

from __future__ import annotations

import io
import json
import os
import threading
from typing import Any

import blake3
import pytest

from cas import Digest
from registry.server import piece_uploads

from .helpers import push_blob


async def test_blob_pieces_are_sent_from_worker_threads_on_the_asyncio_loop(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio's loop.sendfile calls os.sendfile on the loop's thread, which waits for the
    # disk while the pack is not cached: a cold 300 MB layer stalled every client ~300 ms.
    data = os.urandom(4 << 20)  # incompressible: stored raw, sent with sendfile
    digest = await push_blob(client, "cold", data)
    threads: list[threading.Thread] = []
    sendfile = os.sendfile

    def recording(*args: Any) -> int:
        threads.append(threading.current_thread())
        return sendfile(*args)

    monkeypatch.setattr(os, "sendfile", recording)
    resp = await client.get(f"/v2/cold/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    assert threads, "the blob did not go out with sendfile"
    assert threading.main_thread() not in threads


async def test_a_large_push_plan_is_parsed_off_the_loop(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plan of MAX_PIECES pieces (12 MB of JSON) took ~0.4 s of CPU to parse and check.
    blob = os.urandom(1000)
    plan = json.dumps({
        "digest": str(Digest.of(blob)), "size": len(blob),
        "pieces": [{"key": blake3.blake3(blob[i:i + 1]).hexdigest(), "length": 1}
                   for i in range(len(blob))],
    }).encode()
    assert len(plan) > 64 * 1024
    threads: list[threading.Thread] = []
    parse_plan = piece_uploads.parse_plan

    def recording(body: bytes) -> Any:
        threads.append(threading.current_thread())
        return parse_plan(body)

    monkeypatch.setattr(piece_uploads, "parse_plan", recording)
    resp = await client.post("/v2/team/app/_pybuild/blob/uploads/", data=io.BytesIO(plan))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["missing"] == list(range(len(blob)))
    assert threads and threading.main_thread() not in threads
