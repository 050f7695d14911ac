"""HAProxy in front of several registry replicas, as a production deployment runs them:
round-robin per request (optionally blob GETs by a hash of their path), health checks on
``GET /v2/`` every half second, a request whose connection a dead replica refused re-sent
to another (``option redispatch``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .registries import free_port, wait_for_v2
from .tools import DEBIAN_PACKAGE, require_tool

__all__ = ["haproxy_config", "load_balancer"]

DEBIAN_PACKAGE.setdefault("haproxy", "haproxy")


#: Blob GETs and HEADs (``/v2/<name>/blobs/<algorithm>:<hex>``; not uploads).
BLOB_PATH = r"^/v2/.+/blobs/[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$"


def haproxy_config(listen: str, backends: Sequence[str], *, blob_affinity: bool = False) -> str:
    """The configuration: ``listen`` (``127.0.0.1:PORT``) balanced over ``backends``.

    ``blob_affinity``: blob GETs and HEADs are routed by a consistent hash of their path
    (``balance uri``), so each blob keeps being served by one replica (whose piece cache
    then holds it) while that replica is up; every other request is round-robin."""
    servers = "".join(f"  server r{i} {addr} check inter 500ms fall 1 rise 1\n"
                      for i, addr in enumerate(backends, 1))
    check = "  option httpchk GET /v2/\n  http-check expect status 200,401\n"
    text = (
        "global\n  maxconn 2000\n"
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 300s\n"
        "  timeout server 300s\n  option redispatch\n  retries 3\n"
        f"frontend registry\n  bind {listen}\n"
    )
    if blob_affinity:
        text += (f"  acl blob_get method GET HEAD\n  acl blob_path path_reg {BLOB_PATH}\n"
                 "  use_backend blobs if blob_get blob_path\n")
    text += "  default_backend replicas\nbackend replicas\n  balance roundrobin\n" + check + servers
    if blob_affinity:
        text += "backend blobs\n  balance uri\n  hash-type consistent\n" + check + servers
    return text


def _server_checks(stats: Path) -> list[tuple[str, str, str]]:
    """(server, status, last check) of every server, from the stats socket's CSV."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    name, status, check = (header.index(k) for k in ("svname", "status", "check_status"))
    rows = [line.split(",") for line in lines[1:] if line]
    return [(r[name], r[status], r[check]) for r in rows if r[name] not in ("FRONTEND", "BACKEND")]


def _wait_for_checks(stats: Path, timeout: float) -> None:
    """Until a first round of health checks has passed on every server (HAProxy spreads
    them over one ``inter``)."""
    deadline = time.monotonic() + timeout
    while True:
        servers = _server_checks(stats)
        if servers and all(st == "UP" and check == "L7OK" for _, st, check in servers):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"HAProxy's health checks did not pass within {timeout:.0f} s: "
                               f"{servers}")
        time.sleep(0.05)


@contextlib.contextmanager
def load_balancer(backends: Sequence[str], *, blob_affinity: bool = False) -> Iterator[str]:
    """Run HAProxy over ``backends`` (:func:`haproxy_config`); yield its address; stop it
    afterwards."""
    binary = require_tool("haproxy")
    listen = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="pbha") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        stats = Path(tmp) / "stats.sock"
        config.write_text(haproxy_config(listen, backends, blob_affinity=blob_affinity)
                          .replace("global\n", f"global\n  stats socket {stats}\n", 1))
        log = open(Path(tmp) / "haproxy.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_v2(listen, timeout=30, alive=lambda: proc.poll() is None)
            _wait_for_checks(stats, timeout=30)
            yield listen
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
