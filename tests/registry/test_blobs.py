"""Blob GET/HEAD/DELETE: digests, ranges, ETags, per-repository visibility."""

from __future__ import annotations

import asyncio
import os

import pytest

from cas import Digest
from registry.server import stalls

from .helpers import error_codes, push_blob, stalled_get


async def test_get_and_head_return_the_bytes_and_headers(client):
    data = os.urandom(300_000)
    digest = await push_blob(client, "a/b", data)
    resp = await client.get(f"/v2/a/b/blobs/{digest}")
    assert resp.status == 200
    assert await resp.read() == data
    assert resp.headers["Docker-Content-Digest"] == str(digest)
    assert resp.headers["Content-Length"] == str(len(data))
    assert resp.headers["ETag"] == f'"{digest}"'
    assert resp.headers["Accept-Ranges"] == "bytes"
    head = await client.head(f"/v2/a/b/blobs/{digest}")
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(data))
    assert await head.read() == b""


async def test_large_blob_streams_intact(client):
    data = os.urandom(12 * 1024 * 1024) + b"tail"
    digest = await push_blob(client, "big", data)
    resp = await client.get(f"/v2/big/blobs/{digest}")
    got = bytearray()
    async for chunk in resp.content.iter_chunked(1 << 20):
        got += chunk
    assert Digest.of(bytes(got)) == digest


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=100-", 100, 999), ("bytes=-10", 990, 999), ("bytes=995-5000", 995, 999)],
)
async def test_range_requests_get_206(client, header, start, end):
    data = os.urandom(1000)
    digest = await push_blob(client, "r", data)
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/1000"
    assert await resp.read() == data[start : end + 1]


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2", "bytes=abc", "items=0-1", "bytes=-0"])
async def test_unsatisfiable_or_bogus_range_is_416(client, header):
    digest = await push_blob(client, "r", os.urandom(1000))
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */1000"
    assert await error_codes(resp) == ["RANGE_INVALID"]



@pytest.mark.parametrize("header", ["bytes=-1", "bytes=-1,-5", "bytes=0-0,-1"])
async def test_a_suffix_range_of_an_empty_blob_is_the_whole_blob(client, header):
    # Satisfiable (RFC 9110 14.1.1), but no Content-Range names zero bytes: Go's
    # http.ServeContent (CNCF Distribution) writes the malformed "bytes 0--1/0".
    digest = await push_blob(client, "r", b"")
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
    assert resp.status == 200
    assert "Content-Range" not in resp.headers
    assert resp.headers["Content-Length"] == "0"
    assert await resp.read() == b""
    # A range that starts at or after the end of an empty blob is still unsatisfiable.
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */0"

def multipart_parts(resp_headers, body: bytes) -> list[tuple[str, bytes]]:
    """The (Content-Range, bytes) of each part of a multipart/byteranges answer."""
    kind, _, boundary = resp_headers["Content-Type"].partition("; boundary=")
    assert kind == "multipart/byteranges"
    assert body.startswith(b"--" + boundary.encode() + b"\r\n")
    assert body.endswith(b"\r\n--" + boundary.encode() + b"--\r\n")
    inner = body[len(boundary) + 4 : -(len(boundary) + 8)]
    parts = []
    for chunk in inner.split(b"\r\n--" + boundary.encode() + b"\r\n"):
        head, _, data = chunk.partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        assert fields["Content-Type"] == "application/octet-stream"
        parts.append((fields["Content-Range"], data))
    return parts


async def test_several_ranges_are_a_multipart_answer(client):
    # As CNCF Distribution (Go's http.ServeContent): one part per range, in the order
    # asked, never merged (containers/image takes part i as the chunk i it asked for).
    data = os.urandom(100)
    digest = await push_blob(client, "r", data)
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=50-59, 0-1,-5"})
    assert resp.status == 206
    body = await resp.read()
    assert resp.headers["Content-Length"] == str(len(body))
    assert multipart_parts(resp.headers, body) == [
        ("bytes 50-59/100", data[50:60]), ("bytes 0-1/100", data[:2]), ("bytes 95-99/100", data[95:])]
    head = await client.head(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-1,5-6"})
    assert head.status == 206
    assert head.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    # Ranges past the end are left out; if none is left, 416.
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-1,200-300,98-"})
    assert multipart_parts(resp.headers, await resp.read()) == [
        ("bytes 0-1/100", data[:2]), ("bytes 98-99/100", data[98:])]
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-1,200-300"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 0-1/100"
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=100-,200-300"})
    assert resp.status == 416
    assert resp.headers["Content-Range"] == "bytes */100"
    assert (await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-1,x-2"})).status == 416
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-1,, 3-4,"})
    assert multipart_parts(resp.headers, await resp.read()) == [
        ("bytes 0-1/100", data[:2]), ("bytes 3-4/100", data[3:5])]
    # More bytes than the blob has (overlaps): the whole blob, as Go serves it.
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=0-80,20-99"})
    assert resp.status == 200
    assert await resp.read() == data


@pytest.mark.parametrize("unit", ["Bytes", "BYTES", "bytes"])
async def test_range_unit_is_case_insensitive_for_one_range_and_several(client, unit):
    # RFC 9110 14.1: range units are compared case-insensitively; one range and several
    # are read alike.
    data = os.urandom(100)
    digest = await push_blob(client, "r", data)
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": f"{unit}=0-1"})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 0-1/100"
    assert await resp.read() == data[:2]
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": f"{unit}=0-1,3-4"})
    assert resp.status == 206
    assert multipart_parts(resp.headers, await resp.read()) == [
        ("bytes 0-1/100", data[:2]), ("bytes 3-4/100", data[3:5])]


@pytest.mark.parametrize(
    ("header", "answer"),
    [
        # A range that starts past the end is left out whatever its last-pos, as Go's
        # http.ServeContent (CNCF Distribution) leaves it out: the rest is served.
        ("bytes=0-1,5000-10", (0, 1)),
        ("bytes=0-1,5000-", (0, 1)),
        ("bytes=5000-10,98-", (98, 99)),
        # Inside the blob, a last-pos before the first-pos is an invalid range: 416.
        ("bytes=0-1,50-10", None),
        ("bytes=5000-10", None),
        ("bytes=5000-10,6000-7000", None),
    ],
)
async def test_multi_range_with_an_unsatisfiable_spec_answers_as_go(client, header, answer):
    data = os.urandom(100)
    digest = await push_blob(client, "r", data)
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
    if answer is None:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */100"
        assert await error_codes(resp) == ["RANGE_INVALID"]
        return
    start, end = answer
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end}/100"
    assert await resp.read() == data[start : end + 1]


async def test_a_range_header_of_a_thousand_ranges_is_read(client):
    # A zstd:chunked partial pull (containers/image) asks for every chunk it lacks, up to
    # 1,024, in one Range header: ~25 KiB for a large layer, past the 8 KiB that aiohttp
    # takes by default (it answered 400; podman asked again with fewer, larger ranges).
    data = os.urandom(64 * 1024)
    digest = await push_blob(client, "r", data)
    ranges = ",".join(f"{i * 60}-{i * 60 + 9}" for i in range(1024))
    assert len(ranges) > 8 * 1024
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": f"bytes={ranges}"})
    assert resp.status == 206
    assert multipart_parts(resp.headers, await resp.read()) == [
        (f"bytes {i * 60}-{i * 60 + 9}/{len(data)}", data[i * 60 : i * 60 + 10]) for i in range(1024)]
    # One more than that is the whole blob (RFC 9110 lets many small ranges be answered so).
    more = ",".join(f"{i * 60}-{i * 60}" for i in range(1025))
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": f"bytes={more}"})
    assert resp.status == 200
    assert await resp.read() == data


async def test_if_none_match_gives_304(client):
    digest = await push_blob(client, "r", b"hello")
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"If-None-Match": f'"{digest}"'})
    assert resp.status == 304


async def test_blob_is_visible_only_in_repositories_it_was_pushed_to(client):
    digest = await push_blob(client, "one", b"private bytes")
    resp = await client.get(f"/v2/two/blobs/{digest}")
    assert resp.status == 404
    assert await error_codes(resp) == ["BLOB_UNKNOWN"]
    assert (await client.head(f"/v2/two/blobs/{digest}")).status == 404


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_digest_algorithms_are_kept(client, algorithm):
    data = b"algorithm " + algorithm.encode()
    digest = await push_blob(client, "alg", data, algorithm)
    assert digest.algorithm == algorithm
    resp = await client.get(f"/v2/alg/blobs/{digest}")
    assert resp.headers["Docker-Content-Digest"] == str(digest)
    assert await resp.read() == data


async def test_empty_blob(client):
    digest = await push_blob(client, "empty", b"")
    resp = await client.get(f"/v2/empty/blobs/{digest}")
    assert resp.status == 200
    assert resp.headers["Content-Length"] == "0"
    assert await resp.read() == b""


async def test_invalid_digest_is_400(client):
    resp = await client.get("/v2/r/blobs/sha256:nothex")
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]
    resp = await client.get("/v2/r/blobs/md5:" + "0" * 32)
    assert resp.status == 400


async def test_delete_blob_unlinks_from_repository_only(client):
    data = b"shared layer"
    digest = await push_blob(client, "x", data)
    await push_blob(client, "y", data)
    resp = await client.delete(f"/v2/x/blobs/{digest}")
    assert resp.status == 202
    assert (await client.get(f"/v2/x/blobs/{digest}")).status == 404
    assert (await client.get(f"/v2/y/blobs/{digest}")).status == 200
    again = await client.delete(f"/v2/x/blobs/{digest}")
    assert again.status == 404
    assert await error_codes(again) == ["BLOB_UNKNOWN"]


async def test_blob_delete_can_be_disabled(make_client):
    client = await make_client(delete_blobs=False)
    digest = await push_blob(client, "x", b"keep")
    resp = await client.delete(f"/v2/x/blobs/{digest}")
    assert resp.status == 405
    assert await error_codes(resp) == ["UNSUPPORTED"]
    assert (await client.get(f"/v2/x/blobs/{digest}")).status == 200


async def test_a_client_that_stops_reading_a_decompressed_blob_is_cut_off(client, monkeypatch):
    """Pieces stored compressed go out written, not by sendfile: a client that stops
    reading is cut off after the same stall as on the sendfile paths, instead of holding
    its connection, its task and a decompressed piece for as long as it likes."""
    monkeypatch.setattr(stalls, "STALL_SECONDS", 1)
    data = bytes(8 << 20)  # compresses: stored compressed, served decompressed
    digest = await push_blob(client, "slow", data)
    got, closed = await asyncio.to_thread(stalled_get, client.port, f"/v2/slow/blobs/{digest}", 3)
    assert closed
    assert got < len(data)
    # A client that reads gets it all.
    resp = await client.get(f"/v2/slow/blobs/{digest}")
    assert await resp.read() == data
