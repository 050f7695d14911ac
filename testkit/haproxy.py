"""HAProxy in front of several registry replicas, as a production deployment runs them:
round-robin per request, health checks on ``GET /v2/`` every half second, a request whose
connection a dead replica refused re-sent to another (``option redispatch``).
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


def haproxy_config(listen: str, backends: Sequence[str]) -> str:
    """The configuration: ``listen`` (``127.0.0.1:PORT``) balanced over ``backends``."""
    servers = "".join(f"  server r{i} {addr} check inter 500ms fall 1 rise 1\n"
                      for i, addr in enumerate(backends, 1))
    return (
        "global\n  maxconn 2000\n"
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 300s\n"
        "  timeout server 300s\n  option redispatch\n  retries 3\n"
        f"frontend registry\n  bind {listen}\n  default_backend replicas\n"
        "backend replicas\n  balance roundrobin\n  option httpchk GET /v2/\n"
        "  http-check expect status 200,401\n" + servers
    )


@contextlib.contextmanager
def load_balancer(backends: Sequence[str]) -> Iterator[str]:
    """Run HAProxy over ``backends``; yield its address; stop it afterwards."""
    binary = require_tool("haproxy")
    listen = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="pbha") as tmp:
        config = Path(tmp) / "haproxy.cfg"
        config.write_text(haproxy_config(listen, backends))
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
