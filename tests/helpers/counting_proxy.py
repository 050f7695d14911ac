"""A loopback HTTP proxy in front of a registry that records every request it passes on
(method, path, status, bytes of the response body), so a test can assert what a client
fetched: e.g. that no layer blob was GET."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int
    body_bytes: int


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = ""
    log: list[Served]
    lock: threading.Lock

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for k, v in self.headers.items():  # repeated headers (Accept) each on their own
            if k.lower() not in ("connection", "content-length"):
                conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read() if self.command != "HEAD" else b""
        with self.lock:
            self.log.append(Served(self.command, self.path, resp.status, len(data)))
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() in ("connection", "transfer-encoding"):
                continue
            if k.lower() == "content-length" and self.command != "HEAD":
                continue
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)
        conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        self.log: list[Served] = []
        lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"upstream": upstream, "log": self.log,
                                                 "lock": lock})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"

    def blob_gets(self, digests: set[str] | None = None) -> list[Served]:
        """The blob GETs served (of ``digests`` only, when given)."""
        return [s for s in self.log if s.method == "GET" and "/blobs/" in s.path
                and (digests is None or s.path.rsplit("/", 1)[-1] in digests)]


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    """Proxy ``upstream`` (``host:port``) on a free loopback port while the block runs."""
    proxy = CountingProxy(upstream)
    thread = threading.Thread(target=proxy.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.server.shutdown()
        proxy.server.server_close()
