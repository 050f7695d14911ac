"""HAProxy in front of several registry replicas, as a production deployment runs them:
round-robin per request (optionally blob GETs by a hash of their path), health checks on
``GET /v2/`` every half second, a request whose connection a dead replica refused re-sent
to another (``option redispatch``).
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def load_balancer(backends: Sequence[str], *, blob_affinity: bool = False) -> Iterator[str]:
    """Run HAProxy over ``backends`` (:func:`haproxy_config`); yield its address; stop it
    afterwards."""
    binary = require_tool("haproxy")
    listen = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="pbha") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(haproxy_config(listen, backends, blob_affinity=blob_affinity))
        log = open(Path(tmp) / "haproxy.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_v2(listen, timeout=30, alive=lambda: proc.poll() is None)
            time.sleep(1.0)  # a first round of health checks marks every replica up
            yield listen
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            log.close()
