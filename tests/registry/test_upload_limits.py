"""Upload sessions between requests hold no buffers; how many sessions, and how many
bytes in them, a client holds is bounded (429 TOOMANYREQUESTS); a session whose ingest
failed on a full disk is unknown afterwards, never a session claiming lost bytes."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from cas import Digest
from registry.server.limits import UploadSlots
from registry.server.state import REGISTRY
from tests.helpers.disks import small_filesystem

from .helpers import error_codes, push_blob


async def _start(client, repo="lim/repo"):
    return await client.post(f"/v2/{repo}/blobs/uploads/")


async def test_an_idle_session_holds_no_buffers(client):
    resp = await _start(client)
    location = resp.headers["Location"]
    data = os.urandom(3_500_000)
    resp = await client.patch(location, data=io.BytesIO(data))
    assert resp.status == 202, await resp.text()
    reg = client.app[REGISTRY]
    (ingest,) = reg.ingests.values()
    assert ingest.parked, "between requests the session's ingest gave its buffers back"
    assert len(ingest._cutter._buf) == 0 and ingest._writer is None
    resp = await client.put(f"{location}?digest={Digest.of(data + b'end')}", data=b"end")
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/lim/repo/blobs/{Digest.of(data + b'end')}")).read() \
        == data + b"end"


async def test_sessions_per_client_are_bounded(make_client):
    client = await make_client(uploads_max_sessions_per_client=3)
    locations = []
    for _ in range(3):
        resp = await _start(client)
        assert resp.status == 202
        locations.append(resp.headers["Location"])
    resp = await _start(client)
    assert resp.status == 429
    assert await error_codes(resp) == ["TOOMANYREQUESTS"]
    assert resp.headers["Retry-After"]
    assert "sessions per client: 3 of 3" in (await resp.json())["errors"][0]["message"]
    # A cancelled and a finished session give their places back.
    assert (await client.delete(locations[0])).status == 204
    assert (await _start(client)).status == 202
    resp = await client.put(f"{locations[1]}?digest={Digest.of(b'x')}", data=b"x")
    assert resp.status == 201
    assert (await _start(client)).status == 202
    assert (await _start(client)).status == 429


async def test_sessions_in_all_are_bounded(make_client):
    client = await make_client(uploads_max_sessions=2, uploads_max_sessions_per_client=0)
    assert (await _start(client)).status == 202
    assert (await _start(client, "other/repo")).status == 202
    resp = await _start(client)
    assert resp.status == 429 and await error_codes(resp) == ["TOOMANYREQUESTS"]


async def test_bytes_in_sessions_per_client_are_bounded(make_client):
    client = await make_client(uploads_max_bytes_per_client=1 << 20)
    first = (await _start(client)).headers["Location"]
    second = (await _start(client)).headers["Location"]
    assert (await client.patch(first, data=os.urandom(600_000))).status == 202
    # Announced too large: refused before a byte of it is read.
    resp = await client.patch(second, data=os.urandom(600_000))
    assert resp.status == 429 and await error_codes(resp) == ["TOOMANYREQUESTS"]

    # Streamed without a length: stopped once past the bound, what fit is kept.
    async def stream():
        for _ in range(10):
            yield os.urandom(100_000)

    resp = await client.patch(second, data=stream())
    assert resp.status == 429
    status = await client.get(second)
    kept = int(status.headers["Range"].split("-")[1]) + 1
    assert kept <= (1 << 20) - 600_000
    # Finishing the first session makes room again.
    resp = await client.delete(first)
    assert resp.status == 204
    assert (await client.patch(second, data=os.urandom(600_000))).status == 202


async def test_a_patch_failing_on_a_full_disk_leaves_no_session_claiming_bytes(
    make_client, tmp_path: Path
):
    with small_filesystem(tmp_path / "small", "24m") as disk:
        client = await make_client(storage=disk / "storage")
        kept = await push_blob(client, "full/repo", os.urandom(2 << 20))
        location = (await _start(client, "full/repo")).headers["Location"]
        first = os.urandom(4 << 20)
        resp = await client.patch(location, data=io.BytesIO(first))
        assert resp.status == 202
        resp = await client.patch(location, data=io.BytesIO(os.urandom(40 << 20)))
        assert resp.status == 507, await resp.text()
        assert await error_codes(resp) == ["UNAVAILABLE"]
        # The session holds what it claims (its last checkpoint, when the failure left
        # it on disk), or is unknown: never a session claiming bytes it lost.
        status = await client.get(location)
        if status.status == 204:
            assert status.headers["Range"] == f"0-{len(first) - 1}"
            resp = await client.put(f"{location}?digest={Digest.of(first)}")
            assert resp.status == 201, await resp.text()
            blob = await client.get(f"/v2/full/repo/blobs/{Digest.of(first)}")
            assert await blob.read() == first
        else:
            assert status.status == 404, await status.text()
            assert await error_codes(status) == ["BLOB_UPLOAD_UNKNOWN"]
        for method in ("GET", "PATCH", "PUT"):
            query = f"?digest={Digest.of(b'x')}" if method == "PUT" else ""
            resp = await client.request(method, location + query, data=b"x")
            assert resp.status == 404, (method, resp.status, await resp.text())
            assert await error_codes(resp) == ["BLOB_UPLOAD_UNKNOWN"]
        assert client.app[REGISTRY].ingests == {}
        # Earlier blobs stay readable, and the space of the failed one came back.
        resp = await client.get(f"/v2/full/repo/blobs/{kept}")
        assert resp.status == 200 and Digest.of(await resp.read()) == kept
        await push_blob(client, "full/repo", os.urandom(4 << 20))
        await client.close()


@pytest.mark.parametrize("bounds", [
    {"uploads_max_active": 1, "uploads_max_active_per_client": 0},
    {"uploads_max_active": 0, "uploads_max_active_per_client": 1},
])
async def test_bodies_streamed_into_ingests_at_once_are_bounded(make_client, bounds):
    client = await make_client(**bounds)
    first = (await _start(client)).headers["Location"]
    second = (await _start(client)).headers["Location"]
    gate = asyncio.Event()

    async def held_back():
        yield os.urandom(2 << 20)
        await gate.wait()
        yield os.urandom(100_000)

    async def quick():
        yield os.urandom(2 << 20)

    slots = client.app[REGISTRY].upload_slots
    one = asyncio.create_task(client.patch(first, data=held_back()))
    for _ in range(100):
        if slots.active:
            break
        await asyncio.sleep(0.02)
    assert slots.active == 1
    two = asyncio.create_task(client.patch(second, data=quick()))
    await asyncio.sleep(0.5)
    assert not two.done(), "the second body waits for the only slot"
    gate.set()
    assert (await asyncio.wait_for(one, 10)).status == 202
    assert (await asyncio.wait_for(two, 10)).status == 202
    # A small body (announced length) does not wait for a slot.
    async with slots.hold("127.0.0.1"):
        resp = await asyncio.wait_for(client.patch(second, data=b"small"), 10)
        assert resp.status == 202


async def test_sessions_started_at_once_do_not_overshoot_the_bound(make_client):
    client = await make_client(uploads_max_sessions_per_client=5)
    answers = await asyncio.gather(*(_start(client) for _ in range(20)))
    assert sorted(r.status for r in answers) == [202] * 5 + [429] * 15


async def test_a_put_failing_on_a_full_disk_leaves_no_session_claiming_bytes(
    make_client, tmp_path: Path
):
    with small_filesystem(tmp_path / "small", "16m") as disk:
        client = await make_client(storage=disk / "storage")
        location = (await _start(client, "full/repo")).headers["Location"]
        first = os.urandom(2 << 20)
        assert (await client.patch(location, data=io.BytesIO(first))).status == 202
        last = os.urandom(30 << 20)
        resp = await client.put(f"{location}?digest={Digest.of(first + last)}",
                                data=io.BytesIO(last))
        assert resp.status == 507, await resp.text()
        status = await client.get(location)
        if status.status == 204:  # its last checkpoint survived: it holds exactly that
            assert status.headers["Range"] == f"0-{len(first) - 1}"
        else:
            assert status.status == 404 and await error_codes(status) == ["BLOB_UPLOAD_UNKNOWN"]
        resp = await client.patch(location, data=b"x")
        assert resp.status in (202, 404), await resp.text()
        await client.close()


async def test_one_client_cannot_take_every_upload_slot():
    slots = UploadSlots(total=3, per_client=1)
    order = []

    async def body(client: str, gate: asyncio.Event) -> None:
        async with slots.hold(client):
            order.append(client)
            await gate.wait()

    first, second, other = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(body("a", first)), asyncio.create_task(body("a", second)),
             asyncio.create_task(body("b", other))]
    await asyncio.sleep(0.1)
    assert order == ["a", "b"] and slots.active == 2  # a's second body waits
    first.set()
    await asyncio.sleep(0.1)
    assert order == ["a", "b", "a"]
    second.set()
    other.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert slots.active == 0
