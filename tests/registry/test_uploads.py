"""Blob uploads: sessions, chunks, streams, monolithic pushes, mounts, cancel, restart."""

from __future__ import annotations

import asyncio
import gzip
import os

import pytest

from cas import Digest

from .helpers import error_codes, push_blob


async def _start(client, repo="up/repo", query=""):
    resp = await client.post(f"/v2/{repo}/blobs/uploads/{query}")
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == "0-0"
    location = resp.headers["Location"]
    assert location.startswith(f"/v2/{repo}/blobs/uploads/")
    assert resp.headers["Docker-Upload-UUID"] == location.rsplit("/", 1)[1]
    return location


async def _patch(client, location, data, start=None):
    headers = {"Content-Type": "application/octet-stream"}
    if start is not None:
        headers["Content-Range"] = f"{start}-{start + len(data) - 1}"
    return await client.patch(location, data=data, headers=headers)


async def test_chunked_upload(client):
    data = os.urandom(250_000)
    location = await _start(client)
    for start in range(0, len(data), 100_000):
        chunk = data[start : start + 100_000]
        resp = await _patch(client, location, chunk, start)
        assert resp.status == 202, await resp.text()
        assert resp.headers["Range"] == f"0-{start + len(chunk) - 1}"
        location = resp.headers["Location"]
    status = await client.get(location)
    assert status.status == 204
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    digest = Digest.of(data)
    resp = await client.put(f"{location}?digest={digest}")
    assert resp.status == 201, await resp.text()
    assert resp.headers["Location"] == f"/v2/up/repo/blobs/{digest}"
    assert resp.headers["Docker-Content-Digest"] == str(digest)
    assert await (await client.get(f"/v2/up/repo/blobs/{digest}")).read() == data
    # The session is gone once closed.
    assert (await client.get(location)).status == 404


async def test_streamed_patch_without_content_range(client):
    data = os.urandom(70_000)
    location = await _start(client)
    resp = await _patch(client, location, data[:30_000])
    resp = await _patch(client, resp.headers["Location"], data[30_000:])
    assert resp.headers["Range"] == f"0-{len(data) - 1}"
    resp = await client.put(f"{resp.headers['Location']}?digest={Digest.of(data)}")
    assert resp.status == 201


async def test_final_chunk_in_put(client):
    data = b"first half|second half"
    location = await _start(client)
    await _patch(client, location, data[:11], 0)
    resp = await client.put(
        f"{location}?digest={Digest.of(data)}",
        data=data[11:],
        headers={"Content-Range": f"11-{len(data) - 1}"},
    )
    assert resp.status == 201, await resp.text()


async def test_out_of_order_chunk_is_416_and_status_tells_offset(client):
    location = await _start(client)
    await _patch(client, location, b"0123456789", 0)
    resp = await _patch(client, location, b"abc", 20)
    assert resp.status == 416
    assert await error_codes(resp) == ["RANGE_INVALID"]
    status = await client.get(location)
    assert status.headers["Range"] == "0-9"
    # Out of order in the closing PUT too.
    resp = await client.put(
        f"{location}?digest={Digest.of(b'x')}", data=b"x", headers={"Content-Range": "3-3"}
    )
    assert resp.status == 416


async def test_bogus_content_range_is_416(client):
    location = await _start(client)
    resp = await client.patch(location, data=b"abc", headers={"Content-Range": "zero-two"})
    assert resp.status == 416
    resp = await client.patch(location, data=b"abc", headers={"Content-Range": "0-9"})
    assert resp.status == 416  # says 10 bytes, sends 3


async def test_digest_mismatch_stores_nothing(client):
    location = await _start(client)
    await _patch(client, location, b"actual content", 0)
    wrong = Digest.of(b"something else")
    resp = await client.put(f"{location}?digest={wrong}")
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]
    assert (await client.get(f"/v2/up/repo/blobs/{wrong}")).status == 404
    assert (await client.get(f"/v2/up/repo/blobs/{Digest.of(b'actual content')}")).status == 404
    assert (await client.get(location)).status == 404


async def test_monolithic_post_digest_mismatch(client):
    wrong = Digest.of(b"other")
    resp = await client.post(f"/v2/m/blobs/uploads/?digest={wrong}", data=b"content")
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]
    assert (await client.get(f"/v2/m/blobs/{Digest.of(b'content')}")).status == 404


async def test_put_without_digest_is_400(client):
    location = await _start(client)
    resp = await client.put(location)
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]


async def test_digest_algorithm_parameter(client):
    data = b"sha512 session"
    location = await _start(client, query="?digest-algorithm=sha512")
    await _patch(client, location, data, 0)
    digest = Digest.of(data, "sha512")
    resp = await client.put(f"{location}?digest={digest}")
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == str(digest)
    bad = await client.post("/v2/up/repo/blobs/uploads/?digest-algorithm=md5")
    assert bad.status == 400


async def test_cancel_upload(client):
    location = await _start(client)
    await _patch(client, location, b"abc", 0)
    resp = await client.delete(location)
    assert resp.status == 204
    assert (await client.get(location)).status == 404
    again = await client.delete(location)
    assert again.status == 404
    assert await error_codes(again) == ["BLOB_UPLOAD_UNKNOWN"]


async def test_session_belongs_to_its_repository(client):
    location = await _start(client, "first")
    other = location.replace("/v2/first/", "/v2/second/")
    resp = await client.get(other)
    assert resp.status == 404
    assert await error_codes(resp) == ["BLOB_UPLOAD_UNKNOWN"]
    assert (await client.get("/v2/first/blobs/uploads/doesnotexist")).status == 404


async def test_mount_from_repository(client):
    digest = await push_blob(client, "src", b"mount me")
    resp = await client.post(f"/v2/dst/blobs/uploads/?mount={digest}&from=src")
    assert resp.status == 201
    assert resp.headers["Location"] == f"/v2/dst/blobs/{digest}"
    assert await (await client.get(f"/v2/dst/blobs/{digest}")).read() == b"mount me"


async def test_mount_without_from(client):
    digest = await push_blob(client, "src", b"anywhere")
    resp = await client.post(f"/v2/dst2/blobs/uploads/?mount={digest}")
    assert resp.status == 201
    assert (await client.get(f"/v2/dst2/blobs/{digest}")).status == 200


async def test_mount_from_repository_without_the_blob_starts_an_upload(client):
    digest = await push_blob(client, "src", b"secret")
    resp = await client.post(f"/v2/dst/blobs/uploads/?mount={digest}&from=elsewhere")
    assert resp.status == 202
    assert "/blobs/uploads/" in resp.headers["Location"]
    assert (await client.get(f"/v2/dst/blobs/{digest}")).status == 404
    unknown = Digest.of(b"never pushed")
    resp = await client.post(f"/v2/dst/blobs/uploads/?mount={unknown}")
    assert resp.status == 202



async def test_mount_from_a_repository_reads_one_link_not_every_holder(client):
    # A base layer may be held by thousands of repositories: listing (and parsing) them
    # all for each mount stalled the event loop ~100 ms per mount at 3,000.
    from registry.server.state import REGISTRY

    digest = await push_blob(client, "src", b"a popular base layer")
    store = client.server.app[REGISTRY].store

    async def every_holder(digest):
        raise AssertionError("a mount with from= listed every holder of the blob")

    store.holders = every_holder
    resp = await client.post(f"/v2/dst/blobs/uploads/?mount={digest}&from=src")
    assert resp.status == 201, await resp.text()
    resp = await client.post(f"/v2/dst/blobs/uploads/?mount={digest}&from=elsewhere")
    assert resp.status == 202


async def test_an_empty_mount_parameter_starts_an_upload(client):
    # As CNCF Distribution reads it (and as an empty n= is no n): no digest to mount.
    for query in ("mount=", "mount=&from=src"):
        resp = await client.post(f"/v2/dst/blobs/uploads/?{query}")
        assert resp.status == 202, await resp.text()
        assert "/blobs/uploads/" in resp.headers["Location"]
    # A digest that is not one is still named as the problem.
    resp = await client.post("/v2/dst/blobs/uploads/?mount=sha256:ABC&from=src")
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]

async def test_upload_session_survives_restart(make_client, tmp_path):
    storage = tmp_path / "restart"
    first = await make_client(storage=storage)
    location = await _start(first)
    await _patch(first, location, b"before restart|", 0)
    await first.close()
    second = await make_client(storage=storage)
    status = await second.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-14"
    await _patch(second, location, b"after", 15)
    data = b"before restart|after"
    resp = await second.put(f"{location}?digest={Digest.of(data)}")
    assert resp.status == 201, await resp.text()
    assert await (await second.get(f"/v2/up/repo/blobs/{Digest.of(data)}")).read() == data


async def test_client_disconnecting_mid_upload(client):
    location = await _start(client)
    host, port = client.server.host, client.server.port
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + b"z" * 5000
    )
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.2)
    # The server is fine, the session still exists, and what arrived is a valid prefix.
    status = await client.get(location)
    assert status.status == 204
    received = int(status.headers["Range"].split("-")[1]) + 1 if status.headers["Range"] != "0-0" else 0
    assert received <= 5000
    rest = b"z" * (5000 - received) + b"end"
    await _patch(client, location, rest, received if received else None)
    data = b"z" * 5000 + b"end"
    resp = await client.put(f"{location}?digest={Digest.of(data)}")
    assert resp.status == 201, await resp.text()
    assert (await client.get("/v2/")).status == 200


async def test_expired_sessions_are_forgotten(make_client):
    client = await make_client(uploads_ttl=0.0, uploads_expire_interval=0.2)
    location = await _start(client)
    await asyncio.sleep(1.5)
    assert (await client.get(location)).status == 404


async def test_repository_appears_in_catalog_only_after_a_commit(client):
    location = await _start(client, "pending/repo")
    assert "pending/repo" not in (await (await client.get("/v2/_catalog")).json())["repositories"]
    assert (await client.get("/v2/pending/repo/tags/list")).status == 404
    await client.put(f"{location}?digest={Digest.of(b'')}")
    assert "pending/repo" in (await (await client.get("/v2/_catalog")).json())["repositories"]


async def test_final_chunk_streamed_without_content_length(client):
    location = await _start(client)

    async def body():
        yield b"streamed "
        yield b"final chunk"

    data = b"streamed final chunk"
    resp = await client.put(f"{location}?digest={Digest.of(data)}", data=body())
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/up/repo/blobs/{Digest.of(data)}")).read() == data


async def test_put_breaking_off_keeps_what_arrived_across_a_restart(make_client, tmp_path):
    # A PUT that completes is committed without a checkpoint first; one whose body
    # breaks off must still leave a durable prefix to resume from.
    storage = tmp_path / "put-restart"
    first = await make_client(storage=storage)
    location = await _start(first)
    data = b"p" * 5000 + b"end"
    _, writer = await asyncio.open_connection(first.server.host, first.server.port)
    writer.write(
        f"PUT {location}?digest={Digest.of(data)} HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data[:5000]
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()
    await writer.wait_closed()
    before = await first.get(location)
    assert before.status == 204
    assert before.headers["Range"] != "0-0", "the server read part of the body"
    await first.close()
    second = await make_client(storage=storage)
    after = await second.get(location)
    assert after.status == 204
    assert after.headers["Range"] == before.headers["Range"]
    received = int(after.headers["Range"].split("-")[1]) + 1
    resp = await second.put(f"{location}?digest={Digest.of(data)}", data=data[received:],
                            headers={"Content-Range": f"{received}-{len(data) - 1}"})
    assert resp.status == 201, await resp.text()
    assert await (await second.get(f"/v2/up/repo/blobs/{Digest.of(data)}")).read() == data


async def test_chunked_transfer_encoding_with_many_http_chunks(client):
    # Docker streams layers with Transfer-Encoding: chunked; the body reader reports the
    # end of every HTTP chunk as an empty read, which is not the end of the body.
    location = await _start(client)
    parts = [os.urandom(1000 + 37 * i) for i in range(40)]
    data = b"".join(parts)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
    )
    for part in parts:
        # The chunk's bytes first, its closing CRLF later: the server reads the bytes
        # before it learns that the chunk has ended.
        writer.write(b"%x\r\n" % len(part) + part)
        await writer.drain()
        await asyncio.sleep(0.005)
        writer.write(b"\r\n")
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    status_line = await reader.readline()
    assert b" 202 " in status_line, status_line
    writer.close()
    await writer.wait_closed()
    resp = await client.put(f"{location}?digest={Digest.of(data)}")
    assert resp.status == 201, await resp.text()
    assert await (await client.get(f"/v2/up/repo/blobs/{Digest.of(data)}")).read() == data



async def test_a_body_with_a_content_encoding_is_stored_as_sent(client):
    # The bytes on the wire are the blob, as CNCF Distribution stores them: a layer sent
    # with "Content-Encoding: gzip" (a .tar.gz file is gzip) keeps the digest of those
    # bytes and the Content-Length that counts them; the server does not inflate it.
    data = gzip.compress(os.urandom(1000) + b"\0" * 50_000)
    location = await _start(client)
    resp = await client.patch(location, data=data[:100], headers={"Content-Encoding": "gzip"})
    assert resp.status == 202, await resp.text()
    assert resp.headers["Range"] == "0-99"
    resp = await client.put(f"{location}?digest={Digest.of(data)}", data=data[100:],
                            headers={"Content-Encoding": "gzip"})
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/v2/up/repo/blobs/{Digest.of(data)}", auto_decompress=False)
    assert await got.read() == data
    resp = await client.post(f"/v2/up/mono/blobs/uploads/?digest={Digest.of(data)}", data=data,
                             headers={"Content-Encoding": "gzip"})
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("coding", ["gzip, chunked", "identity, chunked", "Deflate,chunked"])
async def test_a_body_in_another_transfer_coding_is_refused(client, coding):
    # aiohttp reads the chunked framing only: the gzip bytes would have become the blob's.
    # RFC 9112 6.1 asks for 501, which Go's server (CNCF Distribution's) answers.
    location = await _start(client)
    body = gzip.compress(b"layer bytes")
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {coding}\r\n"
        "Connection: close\r\n\r\n".encode() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 501 "), answer[:200]
    assert b"Transfer-Encoding" in answer
    status = await client.get(location)
    assert status.headers["Range"] == "0-0"  # nothing was appended

async def test_a_gc_without_grace_between_commit_and_link_takes_no_pushed_blob(client, monkeypatch):
    # GC with --grace 0 takes every blob no holder links. A push's commit links the blob
    # into its repository in the commit's own transaction, so a GC that runs just after the
    # commit (here: while the push records the repository's recipe) finds it linked.
    import registry.server.recipes as recipes
    from registry.server.state import REGISTRY

    reg = client.server.app[REGISTRY]
    record_own = recipes.record_own
    collected = []

    async def gc_then_record(reg_, name, info):
        collected.append((await reg.store.gc(grace=0)).blobs_removed)
        await record_own(reg_, name, info)

    monkeypatch.setattr(recipes, "record_own", gc_then_record)
    monolithic, chunked = os.urandom(300_000), os.urandom(300_000)
    digest = await push_blob(client, "gc/repo", monolithic)
    location = await _start(client, "gc/repo")
    resp = await _patch(client, location, chunked)
    assert resp.status == 202, await resp.text()
    resp = await client.put(f"{resp.headers['Location']}?digest={Digest.of(chunked)}")
    assert resp.status == 201, await resp.text()
    assert collected == [0, 0]
    for data, d in ((monolithic, digest), (chunked, Digest.of(chunked))):
        resp = await client.get(f"/v2/gc/repo/blobs/{d}")
        assert resp.status == 200 and await resp.read() == data


async def test_head_of_upload_session_answers_as_get(client):
    # Distribution answers HEAD on an upload session as GET without a body (204 with
    # Range, Docker-Upload-UUID and Location); a HEAD of an unknown session is a 404.
    location = await _start(client)
    resp = await _patch(client, location, b"hello")
    location = resp.headers["Location"]
    get = await client.get(location)
    head = await client.head(location)
    assert head.status == get.status == 204
    for name in ("Range", "Docker-Upload-UUID", "Location"):
        assert head.headers[name] == get.headers[name], name
    assert head.headers["Range"] == "0-4"
    assert await head.read() == b""
    unknown = await client.head("/v2/up/repo/blobs/uploads/no-such-session")
    assert unknown.status == 404
