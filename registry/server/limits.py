"""What one client may hold of the server: upload sessions, connections, time.

A registry on the network meets careless and hostile clients. Each kind of resource a
client can make the server hold has a bound, per client (its remote address) and in all
(``uploads.*`` and ``http.*`` in the configuration)::

    upload sessions     count and bytes held      UploadLimits      429 TOOMANYREQUESTS
    upload bodies       streamed at once          UploadSlots       wait for a slot
    connections         count (from accept)       ConnectionGuard   429, then closed
    a TLS handshake     time to finish it         tls_accept        closed
    a new connection    time to send its headers  ConnectionGuard   closed
    a kept-alive one    idle time                 aiohttp's keepalive_timeout: closed
    an upload body      time without a byte       uploads._pump     400, then closed

Every limit that is hit is logged as one JSON line (``{"event": "limit", ...}``) on
the registry's logger, at most once a second per kind of limit (with a count of the
ones not logged).

An idle session holds no memory (its ingest is parked: see ``cas.ingest``), only its
checkpoint on disk and a few hundred bytes of state; the session bounds keep the disk
and that state bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..errors import TOOMANYREQUESTS

__all__ = [
    "ConnectionGuard",
    "LimitLog",
    "UploadLimits",
    "UploadSlots",
    "raise_open_files_limit",
]

log = logging.getLogger("pybuild.registry")

# The response a connection over the limit gets before it is closed.
_REFUSAL_BODY = json.dumps({"errors": [{
    "code": "TOOMANYREQUESTS",
    "message": "too many connections from this address: close some and retry",
}]}).encode()
_REFUSAL = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Docker-Distribution-API-Version: registry/2.0\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n\r\n" + _REFUSAL_BODY
)


class LimitLog:
    """One JSON line per limit hit, at most one a second per kind of limit."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()

    def hit(self, limit: str, remote: str | None, **fields: Any) -> None:
        self.hits[limit] += 1
        now = time.monotonic()
        if now - self._last.get(limit, -self.every) < self.every:
            self._quiet[limit] += 1
            return
        self._last[limit] = now
        record = {"event": "limit", "limit": limit, "remote": remote, **fields}
        if self._quiet[limit]:
            record["not_logged"] = self._quiet.pop(limit)
        log.warning("%s", json.dumps(record, separators=(",", ":")))


class UploadLimits:
    """Open upload sessions by client: how many and how many bytes, each bounded per
    client and in all (a bound of 0 is no bound). Sessions found open at start (from
    before a restart) count in the totals under the client ``""``."""

    def __init__(self, *, max_sessions: int, max_sessions_per_client: int,
                 max_bytes: int, max_bytes_per_client: int, log: LimitLog) -> None:
        self.max_sessions = max_sessions
        self.max_sessions_per_client = max_sessions_per_client
        self.max_bytes = max_bytes
        self.max_bytes_per_client = max_bytes_per_client
        self._log = log
        self._sessions: dict[str, tuple[str, int]] = {}  # id -> (client, bytes)
        self._count: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self.total_bytes = 0
        self._reservations = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def admit(self, client: str) -> None:
        """Raise TOOMANYREQUESTS if ``client`` may not open one more session."""
        if self.max_sessions_per_client and self._count[client] >= self.max_sessions_per_client:
            self._refuse("sessions_per_client", client, self._count[client],
                         self.max_sessions_per_client,
                         "finish or cancel (DELETE) open upload sessions before starting more")
        if self.max_sessions and len(self._sessions) >= self.max_sessions:
            self._refuse("sessions", client, len(self._sessions), self.max_sessions,
                         "the registry holds too many open upload sessions: retry later")
        self._admit_bytes(client, 0)

    def reserve(self, client: str) -> str:
        """:meth:`admit` and count the session at once (before the awaits that open it);
        returns a key to :meth:`claim` with the session's id, or to :meth:`remove`."""
        self.admit(client)
        self._reservations += 1
        key = f"reserved:{self._reservations}"
        self.add(key, client)
        return key

    def claim(self, key: str, upload_id: str) -> None:
        client, size = self._sessions.pop(key)
        self._sessions[upload_id] = (client, size)

    def allowance(self, upload_id: str) -> int | None:
        """How many more bytes session ``upload_id`` may take (None: no bound); raises
        TOOMANYREQUESTS when it may take none."""
        client, _ = self._sessions.get(upload_id, ("", 0))
        self._admit_bytes(client, 0)
        room = []
        if self.max_bytes_per_client and client:
            room.append(self.max_bytes_per_client - self._bytes[client])
        if self.max_bytes:
            room.append(self.max_bytes - self.total_bytes)
        return min(room) if room else None

    def refuse_bytes(self, upload_id: str, wanted: int) -> None:
        client, _ = self._sessions.get(upload_id, ("", 0))
        self._refuse("session_bytes", client, wanted, self.allowance(upload_id) or 0,
                     "finish or cancel open upload sessions, or push a smaller blob")

    def _admit_bytes(self, client: str, more: int) -> None:
        if (self.max_bytes_per_client and client
                and self._bytes[client] + more >= self.max_bytes_per_client):
            self._refuse("session_bytes_per_client", client, self._bytes[client],
                         self.max_bytes_per_client,
                         "finish or cancel open upload sessions before sending more")
        if self.max_bytes and self.total_bytes + more >= self.max_bytes:
            self._refuse("session_bytes", client, self.total_bytes, self.max_bytes,
                         "the registry's open upload sessions hold too much: retry later")

    def _refuse(self, limit: str, client: str, value: int, bound: int, advice: str) -> None:
        self._log.hit(limit, client, value=value, bound=bound)
        raise TOOMANYREQUESTS(
            f"upload limit reached ({limit.replace('_', ' ')}: {value} of {bound}): {advice}",
            detail={"limit": limit, "bound": bound},
            headers={"Retry-After": "10"},
        )

    def add(self, upload_id: str, client: str, size: int = 0) -> None:
        self.remove(upload_id)
        self._sessions[upload_id] = (client, size)
        self._count[client] += 1
        self._bytes[client] += size
        self.total_bytes += size

    def update(self, upload_id: str, size: int) -> None:
        """Session ``upload_id`` now holds ``size`` bytes (sessions not counted yet, e.g.
        resumed after a restart, are counted under the client ``""``)."""
        entry = self._sessions.get(upload_id)
        if entry is None:
            self.add(upload_id, "", size)
            return
        client, old = entry
        self._sessions[upload_id] = (client, size)
        self._bytes[client] += size - old
        self.total_bytes += size - old

    def remove(self, upload_id: str) -> None:
        entry = self._sessions.pop(upload_id, None)
        if entry is None:
            return
        client, size = entry
        self._count[client] -= 1
        self._bytes[client] -= size
        self.total_bytes -= size
        if not self._count[client]:
            del self._count[client]
            del self._bytes[client]


class UploadSlots:
    """Bounds the upload bodies streamed into ingests at once, in all and per client:
    an ingest at work holds ~12-24 MiB of buffers, so their number bounds the server's
    memory. A request over either bound waits (its body held back by TCP); a client's
    own bound keeps one client from taking every slot (0: no bound)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.active = 0
        self._by_client: Counter[str] = Counter()
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return len(self._waiters)

    def _free(self, client: str) -> bool:
        return ((not self.total or self.active < self.total)
                and (not self.per_client or self._by_client[client] < self.per_client))

    @contextlib.asynccontextmanager
    async def hold(self, client: str) -> AsyncIterator[None]:
        while not self._free(client):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self.active += 1
        self._by_client[client] += 1
        try:
            yield
        finally:
            self.active -= 1
            self._by_client[client] -= 1
            if not self._by_client[client]:
                del self._by_client[client]
            # Every waiter looks again (the one of another client may fit now).
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class ConnectionGuard:
    """Bounds a server's connections per client and in all, and the time a new
    connection may take to send its first request's headers.

    Installed on the aiohttp ``web.Server`` (the protocol factory of the listening
    sockets), it sees every connection as it is made and lost: one over a limit is
    answered 429 at once and closed before anything of it is read or parsed. A
    connection that has not sent a complete request head ``header_timeout`` seconds
    after it was made is closed (later requests of a kept-alive connection are bounded
    by the idle timeout, which runs from the end of the previous response until the
    next request head is complete).

    A TLS connection reaches the ``web.Server`` only once its handshake is done; so
    that one still in its handshake counts too, :mod:`.tls_accept` counts it when it is
    accepted (:meth:`admit`, keyed by the request handler made for it then) and gives
    its place back when it is lost (:meth:`release`), whether its handshake finished,
    failed or timed out.
    """

    def __init__(self, *, max_connections: int, max_per_client: int,
                 header_timeout: float, log: LimitLog) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.header_timeout = header_timeout
        self._log = log
        self._per_client: Counter[str] = Counter()
        self._clients: dict[Any, str] = {}  # handler -> client
        self._refused: set[Any] = set()  # handlers refused once (logged), until lost
        self._timers: dict[Any, asyncio.TimerHandle] = {}

    @property
    def open(self) -> int:
        return len(self._clients)

    def install(self, server: web.Server) -> None:
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: Any) -> None:
            made(handler, transport)
            self._made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._lost(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def admit(self, handler: Any, transport: Any) -> bool:
        """Count the connection of ``handler`` (its ``transport`` says the client) if it
        is within the limits; False (the hit logged, once per connection: a TLS one is
        looked at again after its handshake) if it is not, and it is not counted."""
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        limit = None
        if self.max_per_client and self._per_client[client] >= self.max_per_client:
            limit, value, bound = "connections_per_client", self._per_client[client], self.max_per_client
        elif self.max_connections and len(self._clients) >= self.max_connections:
            limit, value, bound = "connections", len(self._clients), self.max_connections
        if limit is not None:
            if handler not in self._refused:
                self._refused.add(handler)
                self._log.hit(limit, client, value=value, bound=bound)
            return False
        self._refused.discard(handler)
        self._clients[handler] = client
        self._per_client[client] += 1
        return True

    def release(self, handler: Any) -> None:
        """Give back the place of ``handler``'s connection, if it holds one (once)."""
        self._refused.discard(handler)
        client = self._clients.pop(handler, None)
        if client is not None:
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    def _made(self, handler: Any, transport: Any) -> None:
        # A TLS connection was admitted when accepted; one refused then is looked at again.
        if handler not in self._clients and not self.admit(handler, transport):
            self._refuse(handler, transport)
            return
        if self.header_timeout > 0:
            self._timers[handler] = asyncio.get_running_loop().call_later(
                self.header_timeout, self._check_header, handler, transport, self._clients[handler])

    @staticmethod
    def _refuse(handler: Any, transport: Any) -> None:
        """Answer 429 and close, without reading a request: the handler ignores what
        arrives from now on. The close waits for the client's (or one second): closing
        with its request unread would reset the connection and lose the answer."""
        handler._force_close = True  # RequestHandler: ignore data, never parse a request
        transport.write(_REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(1.0, transport.close)

    def _check_header(self, handler: Any, transport: Any, client: str) -> None:
        self._timers.pop(handler, None)
        # RequestHandler counts the request heads it parsed.
        if handler not in self._clients or getattr(handler, "_request_count", 1) > 0:
            return  # a request head arrived (or the connection is gone)
        self._log.hit("header_timeout", client, seconds=self.header_timeout)
        handler.force_close()
        transport.abort()

    def _lost(self, handler: Any) -> None:
        timer = self._timers.pop(handler, None)
        if timer is not None:
            timer.cancel()
        self.release(handler)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (every connection is a
    descriptor; a server out of them cannot even accept). Returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, hard
    return target, hard
