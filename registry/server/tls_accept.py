"""How the registry accepts a connection on its TLS port, as Go's net/http (and so
Distribution) does:

- Plain HTTP sent to the TLS port is answered ``400 Bad Request`` with Go's very body,
  ``Client sent an HTTP request to an HTTPS server.``, then closed. The first byte of a
  new connection decides: a TLS record of a handshake starts with 0x16 (RFC 8446 §5.1),
  a request line with a letter. asyncio's TLS server would feed the request to OpenSSL,
  which fails the handshake, and the client saw an empty reply.
- A handshake that fails (no client certificate, or one no ``tls.clientcas`` CA signed)
  ends with the TLS alert that says why (``certificate required``, ``unknown CA``), as
  Go's does (``bad certificate``). OpenSSL writes that alert into the connection's
  outgoing buffer; asyncio's and uvloop's TLS protocols both drop that buffer and reset
  the connection instead (their ``_on_handshake_complete`` goes straight to
  ``_fatal_error``, which force-closes the transport), so the client saw ``EOF``.
  uvloop's protocol is compiled: that buffer cannot be reached from Python. asyncio's
  can be subclassed (:class:`AlertingTls`) and runs over any loop's transports, so it
  serves every TLS connection on asyncio's loop, and on uvloop when the configuration
  refuses some clients (``tls.clientcas``, or ``tls.minimum: tls1.3``). Otherwise
  uvloop keeps its own protocol: asyncio's costs ~5% more CPU per small request and
  10-20% per new connection there (measured with wrk), and a handshake is then refused
  only to a client without TLS 1.2 or any cipher of Python's defaults, which sees the
  connection closed (``--event-loop asyncio`` sends it the alert).

Both run on the event loop, without threads: the first bytes arrive as ordinary data
(:class:`FirstBytes`), and are then handed to the TLS protocol, which the transport
feeds from then on. A connection that sends nothing, or does not finish its handshake,
is closed when ``handshake_timeout`` (``http.header_timeout``) has passed since it was
accepted; the request head then has its own ``http.header_timeout``
(:class:`.limits.ConnectionGuard`).

A connection counts in the connection limits from the moment it is accepted
(:meth:`.limits.ConnectionGuard.admit`), handshake or not, until it is lost, however its
handshake ended: otherwise one client could hold any number of connections in their
handshakes. One over a limit is refused as over plain HTTP, with a 429, which needs
the handshake done: it gets :data:`_REFUSED_HANDSHAKE` seconds for that (then the
guard looks again: a place may have come free), so that refused connections are not
held for long.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from .limits import ConnectionGuard

__all__ = ["PLAIN_HTTP_ANSWER", "AlertingTls", "FirstBytes", "TlsSite", "tls_protocol"]

# Go's net/http, word for word (server.go), so clients show what they show for Distribution.
PLAIN_HTTP_ANSWER = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_HANDSHAKE = 0x16  # the content type of a TLS handshake record
_LINGER = 1.0  # seconds a refused connection may take to read its answer and hang up
_DEFAULT_HANDSHAKE_TIMEOUT = 60.0  # asyncio's and uvloop's, when http.header_timeout is 0
_REFUSED_HANDSHAKE = 2.0  # seconds a connection over a limit has to finish its handshake


class AlertingTls(sslproto.SSLProtocol):
    """asyncio's TLS protocol, but a failed handshake sends OpenSSL's alert before the
    connection closes; and it uses only the public methods of the transport beneath
    (asyncio's calls ``_force_close``, which uvloop's transports do not have)."""

    _alerting = False

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None and self._transport is not None:
            self._alerting = True
            cast(Any, self)._process_outgoing()  # OpenSSL's alert, still in the outgoing buffer
        super()._on_handshake_complete(handshake_exc)

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        transport = cast(asyncio.Transport | None, self._transport)
        self._transport = None
        try:
            super()._fatal_error(exc, message)  # only logs, without a transport
        finally:
            self._transport = transport
        if transport is None:
            return
        if self._alerting:
            # close, not abort: what is buffered (the alert) goes out first; a client that
            # reads nothing is cut off all the same.
            transport.close()
            self._loop.call_later(_LINGER, transport.abort)
        else:
            transport.abort()

    def _check_shutdown_timeout(self) -> None:
        state = cast(Any, self)._state
        if state in (sslproto.SSLProtocolState.FLUSHING, sslproto.SSLProtocolState.SHUTDOWN):
            cast(asyncio.Transport, self._transport).abort()


class FirstBytes(asyncio.Protocol):
    """A new connection on the TLS port, until its first bytes arrive: a TLS handshake
    goes on to the protocol ``tls`` (:func:`tls_protocol`), with ``app()`` above it, and
    has what is left of ``timeout`` to finish; anything else is answered
    :data:`PLAIN_HTTP_ANSWER` and closed. Nothing within ``timeout`` seconds: closed.
    With a ``guard``, the connection counts from now until it is lost; one over its
    limits has at most :data:`_REFUSED_HANDSHAKE` seconds instead of ``timeout``."""

    def __init__(self, tls: Callable[..., Any], app: Callable[[], asyncio.BaseProtocol],
                 context: ssl.SSLContext, timeout: float, guard: ConnectionGuard | None = None) -> None:
        self._tls = tls
        self._app = app
        self._context = context
        self._timeout = timeout
        self._guard = guard
        self._handler: asyncio.BaseProtocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        self._transport = transport = cast(asyncio.Transport, transport)  # uvloop's: no subclass
        # Made now, so that the guard knows the connection by it from accept to loss.
        self._handler = self._app()
        timeout = self._timeout
        if self._guard is not None and not self._guard.admit(self._handler, transport):
            timeout = min(timeout, _REFUSED_HANDSHAKE)
        self._deadline = loop.time() + timeout
        self._timer = loop.call_at(self._deadline, transport.abort)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if self._answered or transport is None or not data:
            return  # the rest of a plain-HTTP request, ignored
        loop = asyncio.get_running_loop()
        assert self._timer is not None
        self._timer.cancel()
        if data[0] != _HANDSHAKE:
            self._answered = True
            transport.write(PLAIN_HTTP_ANSWER)
            if transport.can_write_eof():
                transport.write_eof()
            # Closing with the request unread would reset the connection and lose the
            # answer: the client's own close (eof_received) or _LINGER ends it.
            self._timer = loop.call_later(_LINGER, transport.close)
            return
        tls = self._tls(loop, self._handler, self._context, None, server_side=True,
                        ssl_handshake_timeout=max(self._deadline - loop.time(), 0.001))
        if self._guard is not None:
            # The app protocol hears of the loss only if the handshake was done.
            tls.released = functools.partial(self._guard.release, self._handler)
        self._transport = None  # from now on, the TLS protocol's
        transport.set_protocol(tls)
        tls.connection_made(transport)
        view = memoryview(data)
        while view:
            buffer = tls.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            tls.buffer_updated(n)
            view = view[n:]

    def eof_received(self) -> bool:
        return False  # the transport closes

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._guard is not None and self._transport is not None:
            self._guard.release(self._handler)
        self._transport = None


class TlsSite(web.BaseSite):
    """An aiohttp site serving HTTPS on ``sock`` (bound already) or on ``host``:``port``,
    whose connections are accepted by :class:`FirstBytes`."""

    def __init__(self, runner: web.BaseRunner, context: ssl.SSLContext, *, host: str | None = None,
                 port: int = 0, sock: Any = None, handshake_timeout: float = 0.0,
                 backlog: int = 128, guard: ConnectionGuard | None = None) -> None:
        super().__init__(runner, ssl_context=context, backlog=backlog)
        self._host, self._port, self._sock = host, port, sock
        self._handshake_timeout = handshake_timeout or _DEFAULT_HANDSHAKE_TIMEOUT
        self._guard = guard

    @property
    def name(self) -> str:
        sockets = getattr(self._server, "sockets", None)
        if sockets:
            host, port = sockets[0].getsockname()[:2]
        else:
            host, port = self._host or "0.0.0.0", self._port
        return f"https://{f'[{host}]' if ':' in host else host}:{port}"

    async def start(self) -> None:
        await super().start()
        assert self._runner.server is not None and self._ssl_context is not None
        loop = asyncio.get_running_loop()
        tls = tls_protocol(loop, self._ssl_context)
        accept = functools.partial(FirstBytes, tls if self._guard is None else _releasing(tls),
                                   self._runner.server, self._ssl_context, self._handshake_timeout,
                                   self._guard)
        if self._sock is not None:
            self._server = await loop.create_server(accept, sock=self._sock, backlog=self._backlog)
        else:
            self._server = await loop.create_server(accept, self._host, self._port, backlog=self._backlog)


def tls_protocol(loop: asyncio.AbstractEventLoop, context: ssl.SSLContext) -> Callable[..., Any]:
    """The TLS protocol class for ``loop``'s connections: :class:`AlertingTls`, but on
    uvloop its own compiled one when ``context`` refuses no client that speaks TLS 1.2."""
    refuses = context.verify_mode != ssl.CERT_NONE or context.minimum_version > ssl.TLSVersion.TLSv1_2
    if not refuses and type(loop).__module__.startswith("uvloop"):
        from uvloop import loop as uv

        return cast(Callable[..., Any], uv.SSLProtocol)  # type: ignore[attr-defined]
    return AlertingTls


@functools.cache
def _releasing(tls: Any) -> Any:
    """The TLS protocol class ``tls`` (asyncio's, or uvloop's compiled one), calling its
    instance's ``released()`` once its connection is lost."""

    class Releasing(tls):  # type: ignore[misc]
        released: Callable[[], None] | None = None

        def connection_lost(self, exc: BaseException | None) -> None:
            try:
                super().connection_lost(exc)
            finally:
                if self.released is not None:
                    self.released()

    return Releasing
