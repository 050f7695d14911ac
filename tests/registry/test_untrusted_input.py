"""Untrusted input to the registry: every parse of client input is bounded and answers
the spec's 4xx, never a 500; a 500 never carries exception text; request targets that
routing and authentication could read differently are refused."""

from __future__ import annotations

import asyncio
import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import Digest
from registry.server import ServerConfig, make_app
from registry.server.state import REGISTRY

from .fakes import FakeStore
from .helpers import error_codes, push_blob, push_image

HUGE = "9" * 5000


# --- pagination -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n", [HUGE, "9" * 20, "²", "٣", "1e3", "-1", " 1", "0x10", "1.0", "+1"]
)
@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/p/tags/list"])
async def test_bad_page_size_is_pagination_number_invalid(client, path, n):
    await push_blob(client, "p", b"x")
    resp = await client.get(f"{path}?n={quote(n)}")
    assert resp.status == 400, await resp.text()
    assert await error_codes(resp) == ["PAGINATION_NUMBER_INVALID"]


@pytest.mark.parametrize("path", ["/v2/_catalog", "/v2/p/tags/list"])
async def test_empty_page_size_is_no_page_size(client, path):
    """``?n=`` (a client that always sends n) lists as if no n were given, as
    Distribution does."""
    await push_image(client, "p", "v1", [b"x"])  # a repository never tagged has no tags/list
    plain = await client.get(path)
    empty = await client.get(f"{path}?n=")
    assert (plain.status, empty.status) == (200, 200), await empty.text()
    assert await empty.json() == await plain.json()
    assert "Link" not in empty.headers


async def test_large_page_size_is_clamped(client):
    await push_blob(client, "p", b"x")
    resp = await client.get("/v2/_catalog?n=" + "9" * 18)
    assert resp.status == 200
    assert (await resp.json())["repositories"] == ["p"]


# --- ranges ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [f"bytes=0-{HUGE}", f"bytes={HUGE}-", f"bytes=-{HUGE}", f"bytes={HUGE[:4000]}-{HUGE[:4000]}",
     "bytes=0-99999999999999999999", "bytes=²-3"],
)
async def test_range_with_huge_or_odd_numbers_is_416(client, header):
    digest = await push_blob(client, "r", b"0123456789")
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": header})
    assert resp.status == 416, await resp.text()
    assert resp.headers["Content-Range"] == "bytes */10"
    assert await error_codes(resp) == ["RANGE_INVALID"]


async def test_range_end_up_to_int64_is_clamped(client):
    digest = await push_blob(client, "r", b"0123456789")
    resp = await client.get(f"/v2/r/blobs/{digest}", headers={"Range": "bytes=2-9223372036854775807"})
    assert resp.status == 206
    assert await resp.read() == b"23456789"


@pytest.mark.parametrize("header", [f"0-{HUGE}", f"{HUGE[:4000]}-{HUGE[:4000]}", "0-99999999999999999999", "²-3"])
async def test_content_range_with_huge_or_odd_numbers_is_416(client, header):
    start = await client.post("/v2/u/blobs/uploads/")
    location = start.headers["Location"]
    resp = await client.patch(location, data=b"abc", headers={"Content-Range": header})
    assert resp.status == 416, await resp.text()
    assert await error_codes(resp) == ["RANGE_INVALID"]
    status = await client.get(location)
    assert status.status == 204
    assert status.headers["Range"] == "0-0"  # nothing was appended


# --- manifests ------------------------------------------------------------------------------
@pytest.mark.parametrize("opening", [b"[", b'{"a":', b'{"schemaVersion":2,"x":['])
async def test_deeply_nested_manifest_is_manifest_invalid(client, opening):
    resp = await client.put("/v2/deep/manifests/t", data=io.BytesIO(opening * 100_000))
    assert resp.status == 400, await resp.text()
    assert await error_codes(resp) == ["MANIFEST_INVALID"]
    assert "nest" in (await resp.json())["errors"][0]["message"]


# --- 500s are generic -----------------------------------------------------------------------
class _BrokenStore(FakeStore):
    async def stat(self, digest: Digest) -> None:
        raise RuntimeError("disk at /srv/secret/packs/0001 is haunted")


async def test_internal_errors_are_generic_and_logged(aiohttp_client, tmp_path, caplog):
    store = _BrokenStore()
    client = await aiohttp_client(make_app(ServerConfig(), store=store, storage=tmp_path))
    digest = await push_blob(client, "x", b"data")
    with caplog.at_level(logging.ERROR, logger="pybuild.registry"):
        resp = await client.get(f"/v2/x/blobs/{digest}")
    assert resp.status == 500
    body = await resp.text()
    assert "haunted" not in body and "RuntimeError" not in body and "/srv" not in body
    assert await error_codes(resp) == ["UNKNOWN"]
    assert "haunted" in caplog.text  # the details stay in the server's log


async def test_an_unhealthy_store_is_reported_without_its_error_text(client, caplog):
    reg = client.server.app[REGISTRY]

    async def broken(name: str) -> bool:
        raise OSError("disk /srv/secret/registry.db is haunted")

    reg.meta.repository_exists = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="pybuild.registry"):
        resp = await client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["status"] == "unhealthy"
    assert "haunted" not in await resp.text()
    assert "haunted" in caplog.text


# --- a live server for raw requests ---------------------------------------------------------
@pytest.fixture(scope="module")
def live_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A registry on 127.0.0.1 served by a thread of its own (for blocking raw clients)."""
    storage: Path = tmp_path_factory.mktemp("live")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(make_app(ServerConfig(), storage=storage), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        return runner, server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value.encode("latin-1"))
        if (body or method in ("PUT", "PATCH", "POST")) and "Content-Length" not in (headers or {}):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


_BLOB = b"0123456789"
_DIGEST = Digest.of(_BLOB)
_QUERY_TEXT = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from([HUGE, "²", "٣", "NaN", "-0", "0x1", str(_DIGEST), "sha256:" + "0" * 5000]),
)
_HEADER_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from([HUGE, f"bytes=0-{HUGE}", f"0-{HUGE}", "bytes=²-3", "*/*", "\t", ""]),
).filter(lambda s: s.strip() == s or s == "")
_ENDPOINTS = st.sampled_from(
    [
        ("GET", "/v2/_catalog", ("n", "last")),
        ("GET", "/v2/live/tags/list", ("n", "last")),
        ("GET", f"/v2/live/blobs/{_DIGEST}", ()),
        ("HEAD", f"/v2/live/blobs/{_DIGEST}", ()),
        ("GET", "/v2/live/blobs/{value}", ()),
        ("GET", "/v2/live/manifests/{value}", ()),
        ("PUT", "/v2/live/manifests/{value}", ("tag",)),
        ("DELETE", "/v2/live/manifests/{value}", ()),
        ("GET", "/v2/live/referrers/{value}", ("artifactType",)),
        ("GET", "/v2/live/_pybuild/blob/recipe", ("digest",)),
        ("POST", "/v2/live/blobs/uploads/", ("digest", "mount", "from", "digest-algorithm")),
        ("PATCH", "/v2/live/blobs/uploads/{value}", ()),
        ("PUT", "/v2/live/blobs/uploads/{value}", ("digest",)),
    ]
)
_HEADERS = st.dictionaries(
    st.sampled_from(
        ["Range", "Content-Range", "Content-Type", "Accept", "If-None-Match", "Authorization"]
    ),
    _HEADER_TEXT,
    max_size=3,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=_ENDPOINTS,
    value=_QUERY_TEXT,
    params=st.lists(_QUERY_TEXT, max_size=4),
    headers=_HEADERS,
    body=st.one_of(st.binary(max_size=64), st.sampled_from([b"[" * 20_000, b'{"a":NaN}'])),
)
def test_odd_input_never_gets_a_5xx(live_port, endpoint, value, params, headers, body):
    method, path, names = endpoint
    if "{value}" in path:
        # Path components cannot carry '/', '?', '#' or '%' escapes past check_raw_path.
        safe = "".join(c for c in value if c.isascii() and c.isprintable() and c not in "/?#% ")
        path = path.replace("{value}", safe or "x")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in zip(names, params))
    target = f"{path}?{query}" if query else path
    if method in ("GET", "HEAD", "DELETE"):
        body = b""
    status, answer = _request(live_port, method, target, headers, body)
    assert status < 500, (method, target, headers, answer[:300])


@pytest.mark.parametrize("length", [HUGE[:4000], "²", "٣", "-1", "1e3", "0x10", " "])
def test_odd_content_length_is_a_4xx(live_port, length):
    answer = _raw(
        live_port,
        f"POST /v2/live/blobs/uploads/?digest={_DIGEST} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n0123456789".encode(),
    )
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer[:300]


@pytest.fixture(scope="module", autouse=True)
def _live_blob(live_port: int) -> None:
    status, _ = _request(live_port, "POST", f"/v2/live/blobs/uploads/?digest={_DIGEST}", body=_BLOB)
    assert status == 201


def _raw(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` as is and read the response up to the end of its headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.parametrize(
    "target",
    ["*", "/%76%32/_catalog", "/a/../v2/_catalog", "//v2/_catalog", "http://evil/%76%32/_catalog",
     "http://evil/a/../v2/_catalog", "http://evil//v2/_catalog"],
)
def test_targets_routing_could_read_otherwise_are_refused(live_port, target):
    answer = _raw(live_port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500 and status != 404, answer[:300]


@pytest.mark.parametrize(
    "target, path",
    [("http://evil/v2/_catalog", "/v2/_catalog"), ("http://127.0.0.1/v2/", "/v2/"),
     (f"HTTP://x/v2/live/referrers/{_DIGEST}", f"/v2/live/referrers/{_DIGEST}"),
     (f"https://x:1/v2/live/blobs/{_DIGEST}", f"/v2/live/blobs/{_DIGEST}")],
)
def test_an_absolute_target_is_answered_as_its_path(live_port, target, path):
    def answer(t: str) -> bytes:
        return _raw(live_port, f"GET {t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    status_line = answer(path).split(b"\r\n", 1)[0]
    assert status_line.split(b" ", 2)[1] == b"200"
    assert answer(target).split(b"\r\n", 1)[0] == status_line
