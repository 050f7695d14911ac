"""What a careless or hostile client can make ``pybuild serve`` hold: connections that
never send a request, idle keep-alive, stalled bodies, too many connections. Raw
sockets against a real server process, all on loopback (hostile clients bind a source
address of their own in 127.0.0.0/8, so that the limits per client can be told apart
from a well-behaved client on 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from .test_serve_process import Server, _free_port


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def _closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing ``sock`` within ``seconds``; None if the
    connection is still open then."""
    got = b""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += data


def _request(port: int, raw: bytes, source: str = "127.0.0.1") -> bytes:
    with _connect(port, source) as s:
        s.sendall(raw)
        return _closed_within(s, 10) or b""


def _limit_lines(server: Server) -> list[dict]:
    out = []
    for line in server.stderr.read_text().splitlines():
        start = line.find('{"event":"limit"')
        if start >= 0:
            out.append(json.loads(line[start:]))
    return out


def _start(tmp_path: Path, **env: str) -> Server:
    srv = Server(tmp_path / "storage", env={"PYBUILD_LOG_ACCESS": "false", **env})
    srv.start()
    return srv


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def test_silent_half_sent_and_idle_connections_are_closed(tmp_path, servers):
    srv = _start(tmp_path, PYBUILD_HTTP_HEADER_TIMEOUT="1", PYBUILD_HTTP_IDLE_TIMEOUT="2")
    servers.append(srv)
    silent = _connect(srv.port)
    half = _connect(srv.port)
    half.sendall(b"GET /v2/ HT")
    idle = _connect(srv.port)
    idle.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    assert _closed_within(silent, 5) == b""
    assert _closed_within(half, 5) == b""
    assert time.monotonic() - started < 4
    # The kept-alive one answered, then closed once idle for the idle timeout.
    answer = _closed_within(idle, 6)
    assert answer is not None and answer.startswith(b"HTTP/1.1 200")
    for s in (silent, half, idle):
        s.close()
    lines = _limit_lines(srv)
    assert any(line["limit"] == "header_timeout" and line["remote"] == "127.0.0.1"
               for line in lines), lines


def test_connections_are_bounded_per_client_and_in_all(tmp_path, servers):
    srv = _start(tmp_path, PYBUILD_HTTP_MAX_CONNECTIONS_PER_CLIENT="5",
                 PYBUILD_HTTP_MAX_CONNECTIONS="8")
    servers.append(srv)
    hostile = [_connect(srv.port, "127.0.0.2") for _ in range(5)]
    # One more from the same address: told why, and closed.
    refused = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.2")
    assert refused.startswith(b"HTTP/1.1 429"), refused
    assert b"TOOMANYREQUESTS" in refused
    # Another client is still served.
    ok = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok
    # Up to the total: three more from elsewhere fit, the next does not.
    others = [_connect(srv.port, "127.0.0.3") for _ in range(3)]
    time.sleep(0.2)  # let the server account for them
    refused = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.4")
    assert refused.startswith(b"HTTP/1.1 429"), refused
    for s in hostile + others:
        s.close()
    # Closed connections give their places back.
    deadline = time.monotonic() + 5
    while True:
        ok = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      "127.0.0.2")
        if ok.startswith(b"HTTP/1.1 200") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert ok.startswith(b"HTTP/1.1 200"), ok
    limits = {line["limit"] for line in _limit_lines(srv)}
    assert {"connections_per_client", "connections"} <= limits


def _start_upload(port: int) -> bytes:
    """A new upload session's location (POST, no body)."""
    answer = _request(port, b"POST /v2/s/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    return next(line.split(b": ", 1)[1] for line in answer.split(b"\r\n")
                if line.lower().startswith(b"location:"))


def test_a_stalled_upload_body_ends_its_request_and_keeps_what_arrived(tmp_path, servers):
    srv = _start(tmp_path, PYBUILD_HTTP_BODY_TIMEOUT="1")
    servers.append(srv)
    location = _start_upload(srv.port)
    with _connect(srv.port) as s:
        s.sendall(b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1048576\r\n\r\n" + os.urandom(100_000))
        started = time.monotonic()
        s.settimeout(6)
        answer = s.recv(65536)
        assert time.monotonic() - started < 6
        assert answer.startswith(b"HTTP/1.1 400") and b"BLOB_UPLOAD_INVALID" in answer, answer
        # Then closed, once aiohttp's lingering read of the rest (10 s) gave up.
        assert _closed_within(s, 15) is not None, "the stalled upload is still held"
    status = _request(srv.port, b"GET " + location + b" HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 204") and b"Range: 0-99999\r\n" in status, status
    assert any(line["limit"] == "body_timeout" for line in _limit_lines(srv))


def test_the_open_files_limit_is_raised_to_the_hard_limit(tmp_path, servers):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 512:
        pytest.skip(f"the hard limit of open files here is only {hard}")

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    srv = Server(tmp_path / "storage")
    srv.preexec = low_limit
    srv.start()
    servers.append(srv)
    assert srv.proc is not None
    limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert row.split()[3:5] == [str(hard), str(hard)], row


def test_connections_stay_below_the_open_files_limit(tmp_path, servers):
    def tiny_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

    srv = Server(tmp_path / "storage", env={"PYBUILD_LOG_ACCESS": "false"})
    srv.preexec = tiny_limit
    srv.start()
    servers.append(srv)
    # The start-up probe's connection must be gone before the count matters.
    time.sleep(0.3)
    ok = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok
    held = [_connect(srv.port, "127.0.0.2") for _ in range(59)]
    time.sleep(0.2)
    refused = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", "127.0.0.3")
    assert refused.startswith(b"HTTP/1.1 429"), refused
    for s in held:
        s.close()
    assert "open files limit is 300: serving at most 59 connections" in srv.stderr.read_text()


@pytest.mark.parametrize(("limit", "bound"), [(256, 48), (512, 112)])
def test_a_low_open_files_limit_serves_parallel_pulls_to_its_bound(tmp_path, servers, limit, bound):
    # Each connection sending a blob holds up to four descriptors (its socket, the pack,
    # and their duplicates for a sendfile from a thread), beside the store's own.
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    srv = Server(tmp_path / "storage", env={"PYBUILD_LOG_ACCESS": "false"})
    srv.preexec = low_limit
    srv.start()
    servers.append(srv)
    blob = os.urandom(64 << 20)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with _connect(srv.port) as s:
        s.sendall(f"POST /v2/fd/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Type: application/octet-stream\r\nContent-Length: {len(blob)}\r\n"
                  "Connection: close\r\n\r\n".encode() + blob)
        answer = _closed_within(s, 30) or b""
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    time.sleep(0.3)
    pulls = []
    for _ in range(limit):  # pulls that read slowly, each holding its pack, until refused
        s = _connect(srv.port, "127.0.0.2")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /v2/fd/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        pulls.append(s)
        if s.recv(12) != b"HTTP/1.1 200":
            break
    time.sleep(0.5)
    assert len(pulls) == bound + 1  # the one refused (429) included
    pulls.pop().close()
    pulls.pop().close()
    ok = _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), ok
    for s in pulls:
        s.close()
    assert f"open files limit is {limit}: serving at most {bound} connections" in srv.stderr.read_text()
    assert "too many open files" not in srv.stderr.read_text().lower()


def test_a_stalled_manifest_body_ends_its_request(tmp_path, servers):
    srv = _start(tmp_path, PYBUILD_HTTP_BODY_TIMEOUT="1")
    servers.append(srv)
    with _connect(srv.port) as s:
        s.sendall(b"PUT /v2/s/manifests/latest HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"schemaVersion\"")
        started = time.monotonic()
        s.settimeout(6)
        answer = s.recv(65536)
    assert time.monotonic() - started < 6
    assert answer.startswith(b"HTTP/1.1 400") and b"MANIFEST_INVALID" in answer, answer


def test_a_trickling_upload_body_is_as_stalled_as_a_silent_one(tmp_path, servers):
    srv = _start(tmp_path, PYBUILD_HTTP_BODY_TIMEOUT="1")
    servers.append(srv)
    location = _start_upload(srv.port)
    with _connect(srv.port) as s:
        s.sendall(b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 1048576\r\n\r\n" + os.urandom(100_000))
        started = time.monotonic()
        answer = b""
        s.settimeout(0.2)
        while not answer and time.monotonic() - started < 8:
            try:
                s.sendall(b"x")  # one byte every 0.2 s: never silent for a second
                answer = s.recv(65536)
            except TimeoutError:
                continue
    assert answer.startswith(b"HTTP/1.1 400") and b"BLOB_UPLOAD_INVALID" in answer, answer
    assert time.monotonic() - started < 5


def _trickle(port: int, head: bytes, first: bytes) -> tuple[bytes, float]:
    """Send ``head`` and ``first``, then a byte every 0.2 s (never silent for a second):
    the answer, and how long it took to come."""
    with _connect(port) as s:
        s.sendall(head + first)
        started = time.monotonic()
        answer = b""
        s.settimeout(0.2)
        while not answer and time.monotonic() - started < 8:
            try:
                s.sendall(b"x")
                answer = s.recv(65536)
            except TimeoutError:
                continue
    return answer, time.monotonic() - started


def test_trickling_piece_upload_bodies_are_as_stalled_as_silent_ones(tmp_path, servers):
    # The push plan and the pieces of a piece-level push are bodies like any other: less
    # than 64 KiB per http.body_timeout ends the request (and frees its upload slot).
    srv = _start(tmp_path, PYBUILD_HTTP_BODY_TIMEOUT="1", PYBUILD_UPLOADS_MAX_ACTIVE_PER_CLIENT="1")
    servers.append(srv)
    piece = os.urandom(300_000)
    key = blake3.blake3(piece).hexdigest()
    plan = json.dumps({"digest": f"sha256:{hashlib.sha256(piece).hexdigest()}", "size": len(piece),
                       "pieces": [{"key": key, "length": len(piece)}]}).encode()
    answer, took = _trickle(srv.port, b"POST /v2/s/_pybuild/blob/uploads/ HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: %d\r\n\r\n" % (len(plan) + 100), plan[:10])
    assert answer.startswith(b"HTTP/1.1 400") and b"BLOB_UPLOAD_INVALID" in answer, answer
    assert took < 5
    started = _request(srv.port, b"POST /v2/s/_pybuild/blob/uploads/ HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(plan) + plan)
    assert started.startswith(b"HTTP/1.1 202"), started
    location = next(line.split(b": ", 1)[1] for line in started.split(b"\r\n")
                    if line.lower().startswith(b"location:"))
    answer, took = _trickle(srv.port, b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: %d\r\nPybuild-Pieces: %d:%s\r\n\r\n"
                            % (len(piece), len(piece), key.encode()), piece[:1000])
    assert answer.startswith(b"HTTP/1.1 400") and b"BLOB_UPLOAD_INVALID" in answer, answer
    assert took < 5
    # Its upload slot (the only one this client has) is free again.
    sent = _request(srv.port, b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: %d\r\nPybuild-Pieces: %d:%s\r\nConnection: close\r\n\r\n"
                    % (len(piece), len(piece), key.encode()) + piece)
    assert sent.startswith(b"HTTP/1.1 202"), sent
    assert sum(line["limit"] == "body_timeout" for line in _limit_lines(srv)) >= 2


@pytest.mark.parametrize(("head", "status", "says"), [
    (b"GET /v2/_catalog?" + b"&".join(b"n=%d" % i for i in range(2000)) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
     431, "the request target (URL) is longer than 8190 bytes"),
    (b"GET /v2/ HTTP/1.1\r\nHost: x\r\nRange: bytes=" + b"0-1," * 10000 + b"\r\n\r\n",
     431, "a header line is longer than 32768 bytes"),
    (b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n",
     431, "more than 128 header lines"),
    (b"FOO /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", 405, "use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS"),
    (b"get /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", 405, "methods are case-sensitive"),
], ids=["long-target", "long-header", "many-headers", "unknown-method", "lower-case-method"])
def test_a_request_head_the_parser_refuses_is_told_which_limit_and_what_to_do(
        tmp_path: Path, servers: list[Server], head: bytes, status: int, says: str) -> None:
    # aiohttp answered these 400 in plain text, echoing the line as a Python repr
    # ("Got more than 8190 bytes when reading: bytearray(b'/v2/_catalog?n=0&n=1...')");
    # Go's net/http (Distribution's) answers a head over its limit 431.
    srv = _start(tmp_path)
    servers.append(srv)
    answer = _request(srv.port, head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == str(status).encode(), answer[:300]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower()
    error = json.loads(body)["errors"][0]
    assert error["code"] == "UNSUPPORTED" and says in error["message"], error
    # The connection's next client is served as ever; no traceback in the log.
    assert _request(srv.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 200")
    assert "Traceback" not in srv.stderr.read_text()


def test_https_sent_to_the_plain_port_keeps_its_answer(tmp_path: Path, servers: list[Server]) -> None:
    srv = _start(tmp_path)
    servers.append(srv)
    answer = _request(srv.port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64)
    assert answer.startswith(b"HTTP/1.0 400") and b"HTTPS" in answer, answer


def test_the_debug_port_is_bounded_as_the_registry_port(tmp_path: Path, servers: list[Server]) -> None:
    # Both listeners share the process's descriptors; the debug port kept any number of
    # connections that sent nothing for an hour (aiohttp's keep-alive), whatever the
    # registry's limits said.
    debug = _free_port()
    srv = _start(tmp_path, PYBUILD_HTTP_DEBUG_ADDR=f"127.0.0.1:{debug}", PYBUILD_HTTP_HEADER_TIMEOUT="1",
                 PYBUILD_HTTP_IDLE_TIMEOUT="2", PYBUILD_HTTP_MAX_CONNECTIONS_PER_CLIENT="3")
    servers.append(srv)
    _wait_listening(debug)
    silent = [_connect(debug, "127.0.0.2") for _ in range(3)]
    refused = _connect(debug, "127.0.0.2")
    answer = _closed_within(refused, 5)
    assert answer is not None and answer.startswith(b"HTTP/1.1 429"), answer
    started = time.monotonic()
    assert all(_closed_within(s, 5) == b"" for s in silent)  # after http.header_timeout
    assert time.monotonic() - started < 4
    for s in (*silent, refused):
        s.close()
    # An idle kept-alive connection is closed after http.idle_timeout, as on the registry port.
    with _connect(debug) as kept:
        kept.sendall(b"GET /debug/health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _closed_within(kept, 6)
        assert answer is not None and answer.startswith(b"HTTP/1.1 200"), answer
    assert any(line["limit"] == "connections_per_client" for line in _limit_lines(srv))


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)
