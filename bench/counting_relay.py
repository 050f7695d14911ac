"""A counting TCP relay: put it in front of a registry to count the bytes a client moves.

``CountingRelay(upstream)`` listens on a free 127.0.0.1 port and copies every connection
to ``upstream`` (``host:port``) and back, counting the bytes each way. Clients talk to the
relay's address as if it were the registry (plain HTTP on loopback, which Docker, buildah,
skopeo and pybuild all accept). ``snapshot()`` reads the counters; ``reset()`` zeroes them
between the phases of a benchmark.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

__all__ = ["CountingRelay", "Traffic"]

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Traffic:
    """Bytes the registry sent to clients (``from_registry``) and received (``to_registry``)."""

    from_registry: int
    to_registry: int


class CountingRelay:
    """A threaded relay to ``upstream``; a context manager that stops it at exit."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._down = 0  # registry -> client
        self._up = 0  # client -> registry
        self._closing = False
        self._accepter = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._accepter.start()

    def snapshot(self) -> Traffic:
        with self._lock:
            return Traffic(self._down, self._up)

    def reset(self) -> None:
        with self._lock:
            self._down = self._up = 0

    def close(self) -> None:
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accepter.join(timeout=5)

    def __enter__(self) -> CountingRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._upstream, timeout=30)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            done = threading.Semaphore(0)
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, done), daemon=True,
                                 name="relay-pump").start()
            threading.Thread(target=_close_after, args=(done, client, upstream), daemon=True,
                             name="relay-close").start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool,
              done: threading.Semaphore) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                with self._lock:  # counted before it is passed on: whoever got it sees it counted
                    if up:
                        self._up += len(data)
                    else:
                        self._down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Half-close so the other direction drains, then let both sockets go.
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            done.release()


def _close_after(done: threading.Semaphore, *sockets: socket.socket) -> None:
    """Close a connection's two sockets once both directions have ended."""
    done.acquire()
    done.acquire()
    for sock in sockets:
        sock.close()
