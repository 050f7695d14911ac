"""``pybuild serve`` as a real process: startup, access log, TLS, graceful shutdown,
upload sessions surviving a restart."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from cas import Digest

from .helpers import start_serve

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, storage: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.storage = storage
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.stderr = storage.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.preexec: Callable[[], None] | None = None  # run in the child before exec

    @property
    def scheme(self) -> str:
        return "https" if "--tls-cert" in self.args else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        with self.stderr.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "builder", "serve", "--addr", f"127.0.0.1:{self.port}",
                 "--storage", str(self.storage), *self.args],
                cwd=ROOT, env=self.env, stderr=log, stdout=subprocess.DEVNULL,
                preexec_fn=self.preexec,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.stderr.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("pybuild serve did not start: " + self.stderr.read_text())

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # A server too stuck to stop (its loop blocked) must not outlive its test,
            # spinning beside the rest of the suite.
            self.proc.kill()
            self.proc.wait()
            raise

    def log_lines(self) -> list[dict]:
        out = []
        for line in self.stderr.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


def serving(storage: Path, loop: str) -> Iterator[Server]:
    """A ``pybuild serve`` process on event loop ``loop``, started; stopped afterwards
    (killed if it will not stop)."""
    srv = Server(storage, env={"PYBUILD_EVENT_LOOP": loop})
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    yield from serving(tmp_path / "storage", os.environ.get("LOOP", "auto"))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_serve_push_pull_and_access_log(server, http):
    data = b"layer bytes" * 1000
    digest = Digest.of(data)
    async with http.post(f"{server.url}/v2/p/blobs/uploads/?digest={digest}", data=data) as resp:
        assert resp.status == 201
    async with http.get(f"{server.url}/v2/p/blobs/{digest}") as resp:
        assert await resp.read() == data
    async with http.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
    assert server.stop() == 0
    lines = server.log_lines()
    gets = [line for line in lines if line["method"] == "GET" and line["path"].startswith("/v2/p/blobs/")]
    assert gets and gets[0]["status"] == 200 and gets[0]["bytes"] == len(data)
    assert {"ts", "remote", "ms", "user", "agent"} <= set(gets[0])


async def test_graceful_shutdown_lets_an_upload_finish(server, http):
    async with http.post(f"{server.url}/v2/g/blobs/uploads/") as resp:
        location = resp.headers["Location"]
    chunk = b"x" * 65536
    started = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for i in range(20):
            yield chunk
            if i == 2:
                started.set()
            await asyncio.sleep(0.05)

    async def upload() -> int:
        async with http.patch(f"{server.url}{location}", data=body()) as resp:
            return resp.status

    task = asyncio.create_task(upload())
    await started.wait()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert await task == 202
    assert await asyncio.to_thread(server.proc.wait, 30) == 0
    # The session and its bytes are still there after a restart.
    server.start()
    async with http.get(f"{server.url}{location}") as resp:
        assert resp.status == 204
        assert resp.headers["Range"] == f"0-{20 * len(chunk) - 1}"
    digest = Digest.of(chunk * 20)
    async with http.put(f"{server.url}{location}?digest={digest}") as resp:
        assert resp.status == 201
    async with http.get(f"{server.url}/v2/g/blobs/{digest}") as resp:
        assert Digest.of(await resp.read()) == digest


def test_shutdown_cancels_a_stuck_request_once_shutdown_timeout_has_passed(tmp_path):
    # An upload trickling a byte at a time outlasts the grace period: it is cancelled
    # when shutdown_timeout runs out, not after waiting as long again.
    srv = Server(tmp_path / "storage", env={"PYBUILD_SHUTDOWN_TIMEOUT": "3"})
    srv.start()
    assert srv.proc is not None
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"POST /v2/t/app/blobs/uploads/?digest=sha256:" + b"0" * 64 + b" HTTP/1.1\r\n"
                      b"Host: x\r\nContent-Type: application/octet-stream\r\n"
                      b"Content-Length: 1000000\r\n\r\n" + b"a" * 1000)
            time.sleep(0.5)
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            trickling = True
            while srv.proc.poll() is None and time.monotonic() - started < 20:
                if trickling:
                    try:
                        s.sendall(b"a")
                    except OSError:  # the request was cancelled: its connection closed
                        trickling = False
                time.sleep(0.2)
            elapsed = time.monotonic() - started
    finally:
        if srv.proc.poll() is None:
            srv.proc.kill()
        srv.proc.wait()
    assert srv.proc.returncode == 0, srv.stderr.read_text()
    assert 3 <= elapsed < 5, elapsed
    assert "shutdown timeout: cancelling 1 request(s)" in srv.stderr.read_text()


async def test_tls(tmp_path, http):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(
        subprocess.run,
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    srv = Server(tmp_path / "tls-storage", "--tls-cert", str(cert), "--tls-key", str(key))
    srv.start()
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        data = os.urandom(3 * 1024 * 1024)
        digest = Digest.of(data)
        async with http.post(f"{srv.url}/v2/t/blobs/uploads/?digest={digest}", data=io.BytesIO(data), ssl=ctx) as resp:
            assert resp.status == 201
        async with http.get(f"{srv.url}/v2/t/blobs/{digest}", ssl=ctx) as resp:
            assert resp.status == 200
            assert await resp.read() == data
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with http.get(f"{srv.url}/v2/", ssl=ssl.create_default_context()):
                pass
    finally:
        srv.stop()


def test_bad_config_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "builder", "serve", "--addr", "nonsense"],
        check=False, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYBUILD_STORAGE": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr


def test_a_taken_port_names_the_fix(tmp_path):
    # A newcomer's first `pybuild serve` on Debian meets docker-registry's service on
    # port 5000: the error must say what holds the address and how to get past it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "builder", "serve", "--addr", f"127.0.0.1:{port}"],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "PYBUILD_STORAGE": str(tmp_path)},
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr
    assert "another process listens there" in result.stderr
    assert "--addr" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag", [True, False], ids=["--htpasswd", "config"])
def test_a_missing_htpasswd_file_gets_the_command_that_makes_it(tmp_path, flag):
    missing = tmp_path / "htpasswd"
    config = tmp_path / "registry.yaml"
    config.write_text(f"auth:\n  htpasswd: {missing}\n")
    args = ["--htpasswd", str(missing)] if flag else ["--config", str(config)]
    result = subprocess.run(
        [sys.executable, "-m", "builder", "serve", "--addr", f"127.0.0.1:{_free_port()}", *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYBUILD_STORAGE": str(tmp_path / "storage")},
    )
    assert result.returncode != 0
    assert f"htpasswd file {missing} does not exist" in result.stderr
    assert f"htpasswd -Bc {missing} USER" in result.stderr
    assert "apache2-utils" in result.stderr


def test_an_ipv6_address_is_announced_as_a_url(tmp_path):
    # `--addr [::1]:PORT`: the line that says where the registry listens is a URL that
    # works as written (an IPv6 host in brackets), and the registry answers there.
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError as exc:  # IPv6 turned off in this kernel or network namespace
            pytest.skip(f"no IPv6 loopback here: {exc}")
        port = probe.getsockname()[1]
    proc, line = start_serve(["--addr", f"[::1]:{port}", "--storage", str(tmp_path / "storage")],
                             tmp_path / "serve.log")
    try:
        url = line.split()[0]
        assert url == f"http://[::1]:{port}"
        with socket.create_connection(("::1", port), timeout=5) as conn:
            conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
