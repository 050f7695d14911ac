"""``pybuild serve --addr``: where the registry listens, as Distribution's ``http.addr``."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from registry.server.config import load_config

from .helpers import start_serve

ROOT = Path(__file__).resolve().parents[2]


def _has_ipv6_loopback() -> bool:
    with socket.socket(socket.AF_INET6) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            return False
    return True


def _get_v2(family: socket.AddressFamily, host: str, port: int) -> bytes:
    with socket.socket(family) as conn:
        conn.settimeout(5)
        conn.connect((host, port))
        conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
        return conn.recv(64)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback in this network namespace")
@pytest.mark.parametrize("host", ["", "[::]"])
def test_a_wildcard_host_listens_on_ipv4_and_ipv6_on_one_port(tmp_path: Path, host: str) -> None:
    # Distribution (Go) listens on `:5000` and `[::]:5000` with one socket that IPv4 and
    # IPv6 clients both reach: `docker pull localhost:5000/...` may resolve to ::1 first.
    # Port 0: the port announced is the one both families answer on.
    proc, line = start_serve(["--addr", f"{host}:0", "--storage", str(tmp_path / "storage")],
                             tmp_path / "serve.log")
    try:
        url = line.split()[0]
        assert url.startswith("http://localhost:"), line
        assert "(every IPv4 and IPv6 address" in line
        port = int(url.rsplit(":", 1)[1])
        assert _get_v2(socket.AF_INET, "127.0.0.1", port).startswith(b"HTTP/1.1 200")
        assert _get_v2(socket.AF_INET6, "::1", port).startswith(b"HTTP/1.1 200")
        with urllib.request.urlopen(f"{url}/v2/", timeout=5) as answer:
            assert answer.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(("written", "meant"), [
    (":5000", ":5000"), ("0.0.0.0:5000", ":5000"), ("[::]:5000", ":5000"),
    ("127.0.0.1:5000", "127.0.0.1:5000"), ("[::1]:5000", "[::1]:5000"),
])
def test_a_distribution_wildcard_address_is_every_address(tmp_path: Path, written: str, meant: str) -> None:
    # Go's net.Listen takes 0.0.0.0 and [::] as wildcards of both families, as the empty host.
    path = tmp_path / "config.yml"
    path.write_text(f"version: 0.1\nhttp:\n  addr: '{written}'\n  debug:\n    addr: '{written}'\n")
    config = load_config(path, environ={})
    assert (config.addr, config.http_debug_addr) == (meant, meant)
