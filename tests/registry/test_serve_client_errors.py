"""What ``pybuild serve`` logs when clients misbehave: a client that hangs up in the
middle of a blob, or sends a request aiohttp cannot parse, is the client's doing. The
server answers or closes, logs one line, and writes no traceback and no ERROR: a
hostile client must not be able to fill the log with stack traces, and an operator must
not be paged for a ``docker pull`` someone interrupted."""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from cas import Digest

from .test_serve_process import Server, serving


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path / "storage", request.param)


def _raw(server: Server, data: bytes, read: int = 1 << 16) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(data)
        return s.recv(read)


def _wait_for_log(server: Server, text: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        log = server.stderr.read_text(errors="replace")
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


async def _push(server: Server, data: bytes) -> Digest:
    digest = Digest.of(data)
    async with aiohttp.ClientSession() as http, http.post(
            f"{server.url}/v2/big/blobs/uploads/?digest={digest}", data=io.BytesIO(data)) as resp:
        assert resp.status == 201, await resp.text()
    return digest


async def test_a_client_hanging_up_mid_blob_is_one_line_and_no_traceback(server):
    data = os.urandom(48 << 20)
    digest = await _push(server, data)
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(f"GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 200"), head
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # closed with a reset, some 48 MiB unread
    log = _wait_for_log(server, "went away")
    assert "went away" in log, log[-3000:]
    # The server still serves whole blobs, on a fresh connection and a kept-alive one.
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(f"{server.url}/v2/big/blobs/{digest}") as resp:
                assert resp.status == 200
                assert Digest.of(await resp.read()) == digest
    assert server.stop() == 0
    log = server.stderr.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]
    cut = [line for line in server.log_lines()
           if line.get("path") == f"/v2/big/blobs/{digest}" and line.get("bytes", 0) < len(data)]
    assert len(cut) == 3 and all(line["status"] == 499 for line in cut), cut


@pytest.mark.parametrize("request_line", [
    b"GET /v2/\xc3\xa4/tags/list HTTP/1.1",  # a byte aiohttp refuses in a path
    b"GET /v2/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",  # two lengths
    b"GET /v2/ HTTP/1.1\r\nNo colon in this header",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS spoken to plain HTTP (aiohttp: DEBUG)
])
def test_a_request_that_does_not_parse_is_a_400_and_no_traceback(server, request_line):
    for _ in range(20):
        answer = _raw(server, request_line + b"\r\nHost: x\r\n\r\n")
        assert answer.split(b" ")[1] == b"400", answer[:200]
    # Still serving.
    assert _raw(server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
    assert server.stop() == 0
    log = server.stderr.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]
    said = [line for line in log.splitlines() if "bad request from 127.0.0.1" in line]
    assert len(said) == (0 if request_line.startswith(b"\x16") else 20), said[:3]
    assert all(len(line) < 400 for line in said), said[:3]


async def test_a_pack_cut_short_mid_blob_closes_the_connection_and_is_an_error(server):
    """The store's fault, not the client's: logged as an ERROR. The status line has gone
    out, so the server must not write an error answer into the body: it closes the
    connection, and the client sees a short body."""
    data = os.urandom(24 << 20)
    digest = await _push(server, data)
    pack = max(server.storage.rglob("*.pack"), key=lambda p: p.stat().st_size)
    assert pack.stat().st_size >= len(data)
    with pack.open("r+b") as f:
        f.truncate(4 << 20)
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(f"GET /v2/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = bytearray()
        while chunk := s.recv(1 << 20):  # ends only when the server closes
            got += chunk
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert len(body) < len(data)
    assert b"HTTP/1." not in body and b'"errors"' not in body
    assert body == data[:len(body)]
    log = _wait_for_log(server, "shorter than")
    assert " ERROR " in log and "shorter than" in log, log[-3000:]


@pytest.mark.parametrize("framing", ["Content-Length: 0", "Transfer-Encoding: chunked"])
def test_empty_patches_one_after_another_are_answered(server, framing):
    """aiohttp hands every body-less request the same empty reader, whose ``readchunk``
    says "end of an HTTP chunk" forever once anyone has read its end: an upload loop that
    took that for "more to come" spun the event loop, and two empty PATCHes hung the
    whole server."""
    body = b"0\r\n\r\n" if "chunked" in framing else b""
    answer = _raw(server, b"POST /v2/e/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert answer.split(b" ")[1] == b"202", answer[:300]
    location = next(line.split(b": ", 1)[1] for line in answer.split(b"\r\n")
                    if line.lower().startswith(b"location:")).decode()
    for _ in range(3):
        answer = _raw(server, f"PATCH {location} HTTP/1.1\r\nHost: x\r\n{framing}\r\n"
                              "Content-Type: application/octet-stream\r\n\r\n".encode() + body)
        assert answer.split(b" ")[1] == b"202", answer[:300]
    empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    answer = _raw(server, f"PUT {location}{'&' if '?' in location else '?'}digest={empty} HTTP/1.1\r\n"
                          "Host: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert answer.split(b" ")[1] == b"201", answer[:300]
    assert _raw(server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
