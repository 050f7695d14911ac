"""Conditional GETs of blobs and manifests: If-None-Match (weak comparison) and If-Range
(strong comparison), as RFC 9110 and Go's http.ServeContent (CNCF Distribution's blob
handler) read them."""

from __future__ import annotations

import os

import pytest

from .helpers import push_blob, push_image


@pytest.mark.parametrize(
    "header",
    [
        '"{d}"',
        'W/"{d}"',  # what a proxy that compressed the answer revalidates with
        '"sha256:other", W/"{d}"',
        '"sha256:other","{d}"',
        "*",
        "{d}",  # the bare digest, as Distribution's manifest handler accepts it
    ],
)
async def test_if_none_match_that_names_the_blob_gives_304(client, header):
    digest = await push_blob(client, "c/b", b"hello")
    for method in ("GET", "HEAD"):
        resp = await client.request(
            method, f"/v2/c/b/blobs/{digest}", headers={"If-None-Match": header.format(d=digest)})
        assert resp.status == 304, (method, header)
        assert resp.headers["ETag"] == f'"{digest}"'
        assert await resp.read() == b""


@pytest.mark.parametrize("header", ['"sha256:other"', 'W/"sha256:other"', '"', "W/", ","])
async def test_if_none_match_that_names_something_else_gives_the_blob(client, header):
    digest = await push_blob(client, "c/b", b"hello")
    resp = await client.get(f"/v2/c/b/blobs/{digest}", headers={"If-None-Match": header})
    assert resp.status == 200
    assert await resp.read() == b"hello"


@pytest.mark.parametrize("header", ['W/"{d}"', '"x", "{d}"', "*", '"{d}"'])
async def test_if_none_match_on_a_manifest_uses_the_weak_comparison(client, header):
    digest, _ = await push_image(client, "c/m", "t", [b"x"])
    for method in ("GET", "HEAD"):
        resp = await client.request(
            method, "/v2/c/m/manifests/t", headers={"If-None-Match": header.format(d=digest)})
        assert resp.status == 304, (method, header)
        assert resp.headers["Docker-Content-Digest"] == str(digest)
        assert await resp.read() == b""


async def test_if_none_match_in_several_header_fields(client):
    """Each field is one more list member (Distribution's manifest handler reads them all)."""
    digest, _ = await push_image(client, "c/m", "t", [b"x"])
    blob = await push_blob(client, "c/m", b"blob")
    for path, tag in (("manifests/t", digest), (f"blobs/{blob}", blob)):
        resp = await client.get(f"/v2/c/m/{path}",
                                headers=[("If-None-Match", '"sha256:other"'), ("If-None-Match", f'"{tag}"')])
        assert resp.status == 304, path


async def test_if_none_match_of_another_manifest_gives_the_manifest(client):
    _, body = await push_image(client, "c/m", "t", [b"x"])
    resp = await client.get("/v2/c/m/manifests/t", headers={"If-None-Match": 'W/"sha256:other"'})
    assert resp.status == 200
    assert await resp.read() == body


async def test_if_range_with_the_blobs_etag_serves_the_range(client):
    data = os.urandom(1000)
    digest = await push_blob(client, "c/r", data)
    resp = await client.get(f"/v2/c/r/blobs/{digest}",
                            headers={"Range": "bytes=10-19", "If-Range": f'"{digest}"'})
    assert resp.status == 206
    assert resp.headers["Content-Range"] == "bytes 10-19/1000"
    assert await resp.read() == data[10:20]


@pytest.mark.parametrize(
    "if_range",
    [
        '"sha256:0000000000000000000000000000000000000000000000000000000000000000"',
        'W/"{d}"',  # If-Range compares strongly: a weak tag never matches
        "{d}",
        "Mon, 07 Dec 2020 02:19:45 GMT",  # these answers carry no Last-Modified
    ],
)
@pytest.mark.parametrize("ranges", ["bytes=10-19", "bytes=0-1,5-6", "bytes=5000-"])
async def test_if_range_that_does_not_name_the_blob_sends_all_of_it(client, if_range, ranges):
    """RFC 9110 13.1.5: the client's partial copy is of something else, so it gets the
    whole blob (200), never a piece of this one to splice onto its own, nor a 416."""
    data = os.urandom(1000)
    digest = await push_blob(client, "c/r", data)
    resp = await client.get(f"/v2/c/r/blobs/{digest}",
                            headers={"Range": ranges, "If-Range": if_range.format(d=digest)})
    assert resp.status == 200
    assert "Content-Range" not in resp.headers
    assert resp.headers["Content-Length"] == "1000"
    assert await resp.read() == data
