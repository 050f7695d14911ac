"""The client's HTTP/1.1 transport: pooled blocking connections used from worker threads.

Every request of :class:`registry.client.remote.RegistryClient` goes through this module (its
``_send`` keeps every policy: auth, retries, redirects), on a :mod:`http.client`
connection driven by a worker thread: a blob body is read with ``recv_into`` straight
into the ingest's buffer (:meth:`cas.Ingest.receive`) and an upload is sent with
``sendall`` from the caller's buffer, without copies in user space, a thread hop per
socket read or the GIL held meanwhile (an asyncio client delivers each read on the event
loop as a new ``bytes`` object). The client never imports aiohttp.

Connections are kept per origin (scheme, host, TLS settings) and reused once their
response has been read to the end; a response given up half-way closes its connection,
and so does one that arrives for a caller that was cancelled meanwhile (:meth:`Wire.send`).

Errors: :class:`WireError` for anything that broke a request; its subclasses
:class:`UnknownHost` (the name does not resolve) and :class:`Unreachable` (no TCP
connection: refused, timed out, no route) say that nothing reached the server, so the
client can tell a registry that is down from one that broke off a transfer.

The worker threads are daemon threads (:class:`_DaemonPool`): a thread blocked on a
silent server (a TLS handshake, an answer that never comes) would otherwise hold the
process at exit until its timeout, so that a Ctrl-C took up to half a minute. They
only ever wait on sockets; what must be finished before exit (the store's writes) runs
on the store's own threads.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import http.client
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

from .certs_dirs import closed_after_handshake, tls_refusal
from .errors import ClientError
from .proxies import Proxies, Proxy

__all__ = ["PlainHttp", "TlsClosed", "TlsRefused", "UnknownHost", "Unreachable", "Wire", "WireError", "WireResponse"]

T = TypeVar("T")
MAX_SMALL_BODY = 4 << 20


class WireError(ClientError, ConnectionError):
    """The request could not be sent or its answer could not be read."""


class PlainHttp(WireError):
    """The server answered the TLS handshake with something else than TLS: plain HTTP,
    most likely (what Go's client, and so Docker and skopeo, calls "server gave HTTP
    response to HTTPS client"). Asking again gets the same answer."""


class TlsRefused(WireError):
    """The TLS handshake failed over a certificate: the server's is not trusted (unknown
    CA, expired, another name), or the server wants one from the client. Asking again
    gets the same answer; the message says which file to put where."""


class TlsClosed(WireError):
    """A new TLS connection was closed at its first request, the handshake done, without
    an answer: what a registry that wants a client certificate it did not get does when
    it cannot say so (one on asyncio's or uvloop's own TLS, with TLS 1.3). The host speaks TLS."""


# What OpenSSL says of a handshake answered in plain HTTP (3.0; 3.2 and later).
_NOT_TLS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE"})


class Unreachable(WireError):
    """No connection to ``netloc`` could be opened (refused, timed out, no route): nothing
    of the request reached the server. ``reason`` is the system's word for it."""

    def __init__(self, netloc: str, reason: str, proxy: str = "") -> None:
        super().__init__(f"cannot connect to {proxy or netloc}: {reason}")
        self.netloc = netloc
        self.reason = reason
        self.proxy = proxy  # "the proxy HOST:PORT (VARIABLE)" when that is what failed


class UnknownHost(Unreachable):
    """The host name of ``netloc`` does not resolve (no retry helps)."""


class WireResponse:
    """One response; its body is read with :meth:`readinto` (blocking) or :meth:`read`."""

    def __init__(self, wire: Wire, origin: tuple[Any, ...], conn: http.client.HTTPConnection,
                 resp: http.client.HTTPResponse, url: str) -> None:
        self._wire = wire
        self._origin = origin
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self._sock = conn.sock
        self.status = resp.status
        self.headers = resp.headers  # an email.message.Message: get() ignores case
        self.url = url
        self._shown = _bare(url)

    @property
    def length(self) -> int | None:
        """The body's declared length (None for a chunked body)."""
        return self._resp.length if not self._resp.chunked else None

    def readinto(self, view: memoryview) -> int:
        """Read up to ``len(view)`` body bytes into ``view``; 0 at the end of the body.
        A body that ends before its declared length raises WireError."""
        try:
            n = self._resp.readinto(view)
        except (OSError, http.client.HTTPException) as exc:
            raise WireError(f"reading the body of {self._shown}: {exc or type(exc).__name__}") from exc
        if not n and len(view) and self._resp.length:
            raise WireError(f"{self._shown}: the connection closed {self._resp.length} bytes before "
                            "the end of the body")
        return n

    def readsome(self, view: memoryview) -> int:
        """As :meth:`readinto`, but returns what one read of the connection brings (at
        least a byte; 0 at the end of the body) instead of waiting until ``view`` is
        full: a reader that passes bytes on as they come (a pull-through cache) sees a
        slow body's every byte, and a stalled one's last."""
        try:
            data = self._resp.read1(len(view))
        except (OSError, http.client.HTTPException) as exc:
            raise WireError(f"reading the body of {self._shown}: {exc or type(exc).__name__}") from exc
        n = len(data)
        if not n and len(view) and self._resp.length:
            raise WireError(f"{self._shown}: the connection closed {self._resp.length} bytes before "
                            "the end of the body")
        view[:n] = data
        return n

    def fill(self, view: memoryview) -> tuple[int, WireError | None]:
        """Read until ``view`` is full or the body ends (blocking): the bytes read, and the
        failure that stopped it early, if any."""
        n = 0
        try:
            while n < len(view):
                k = self.readinto(view[n:])
                if not k:
                    break
                n += k
        except WireError as exc:
            return n, exc
        return n, None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` (which reads this body) on the wire's threads. A cancelled caller
        aborts the response, which makes a blocked read return, and waits for ``fn`` to
        end: nothing reads the response after its release."""
        job = asyncio.ensure_future(self._wire.call(fn, *args))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            self.abort()
            while not job.done():
                try:
                    await asyncio.wait([job])
                except asyncio.CancelledError:
                    continue
            raise

    async def read(self) -> bytes:
        """The whole (small) body: error documents, manifests (cancellable as :meth:`run`)."""
        return await self.run(self._read_small)

    def _read_small(self) -> bytes:
        try:
            data = self._resp.read(MAX_SMALL_BODY + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise WireError(f"reading the body of {self._shown}: {exc or type(exc).__name__}") from exc
        if len(data) > MAX_SMALL_BODY:
            raise WireError(f"{self._shown} answered with a body over {MAX_SMALL_BODY} bytes")
        return data

    def abort(self) -> None:
        """Wake a thread blocked in :meth:`readinto` (it then sees the body end); safe to
        call from any thread."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Done with the response: its connection is reused if the body was read to the
        end, else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self._resp.isclosed() and not self._resp.chunked and self._resp.length == 0:
            self._resp.read()  # an empty body (HEAD, 204): nothing to wait for
        if self._resp.isclosed() and not self._resp.will_close and conn.sock is not None:
            self._wire._put(self._origin, conn)
        else:
            self._resp.close()
            conn.close()


class Wire:
    """A pool of blocking connections; :meth:`request` may be called from any thread, and
    :meth:`call` runs blocking work on the wire's own threads (up to ``threads`` at once:
    asyncio's default executor has only ``cpu_count + 4``, fewer than the Range requests
    a pull keeps in flight)."""

    def __init__(self, connect_timeout: float = 30, read_timeout: float = 120,
                 threads: int = 32, idle: int = 16) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._keep = idle  # idle connections kept per origin
        self._threads = threads
        self._executor: _DaemonPool | None = None
        self._idle: dict[tuple[Any, ...], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._default_tls: ssl.SSLContext | None = None
        self._unverified_tls: ssl.SSLContext | None = None
        self._closed = False  # connections released after close() are closed, not pooled
        self._proxies = Proxies()  # HTTPS_PROXY, HTTP_PROXY, NO_PROXY (proxies.py)

    def request(self, method: str, url: str, headers: dict[str, str],
                params: dict[str, str] | list[tuple[str, str]] | None = None, tls: Any = None,
                body: bytes | bytearray | memoryview | None = None) -> WireResponse:
        """Send a request and read the status and headers of its answer (blocking).

        ``tls``: None verifies with the system's CAs, False does not verify, an
        ``ssl.SSLContext`` is used as it is. A request on an idle pooled connection that
        the server closed meanwhile is sent once more on a new one, unless it carries a
        body (the server may have kept part of it: the caller decides)."""
        parts = urlsplit(url)
        target = parts.path or "/"
        query = "&".join(q for q in (parts.query, urlencode(params) if params else "") if q)
        if query:
            target += "?" + query
        proxy = self._proxies.for_url(parts.scheme, parts.netloc) if self._proxies else None
        if proxy is not None and parts.scheme == "http":  # to the proxy, in absolute form
            target = f"http://{parts.netloc}{target}"
            if proxy.authorization:
                headers = {**headers, "Proxy-Authorization": proxy.authorization}
        origin = (parts.scheme, parts.netloc, id(tls) if isinstance(tls, ssl.SSLContext) else tls,
                  proxy)
        conn = self._take(origin)
        fresh = conn is None
        for attempt in range(2):
            if conn is None:
                conn = self._connect(parts.scheme, parts.netloc, tls, proxy)
                fresh = True
            try:
                if conn.sock is None:
                    _open(conn, parts.netloc, "" if proxy is None
                          else f"the proxy {proxy.netloc} ({proxy.variable})")
                    assert conn.sock is not None
                    conn.sock.settimeout(self.read_timeout)
                conn.request(method, target, body=body, headers=headers)
                resp = conn.getresponse()
            except Unreachable:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                # An idle connection the server closed meanwhile: one more try on a new
                # one (nothing was read, and the request had no body).
                if not fresh and attempt == 0 and body is None:
                    continue
                if isinstance(exc, ssl.SSLError) and exc.reason in _NOT_TLS:
                    raise PlainHttp(
                        f"{method} {_bare(url)}: {parts.netloc} does not speak TLS (server gave HTTP "
                        f"response to HTTPS client): it is a plain-HTTP registry; allow that with "
                        f"--insecure {parts.netloc} (or PYBUILD_INSECURE_REGISTRIES), or serve it over TLS"
                    ) from exc
                if isinstance(exc, ssl.SSLError) and (why := tls_refusal(exc, parts.netloc)):
                    raise TlsRefused(f"{method} {_bare(url)}: {why}") from exc
                if fresh and parts.scheme == "https" and isinstance(exc, http.client.RemoteDisconnected):
                    raise TlsClosed(f"{method} {_bare(url)}: {closed_after_handshake(parts.netloc)}") from exc
                raise WireError(f"{method} {_bare(url)}: {exc or type(exc).__name__}") from exc
            return WireResponse(self, origin, conn, resp, url)
        raise AssertionError("unreachable")

    async def send(self, method: str, url: str, headers: dict[str, str],
                   params: dict[str, str] | list[tuple[str, str]] | None = None, tls: Any = None,
                   body: bytes | bytearray | memoryview | None = None) -> WireResponse:
        """:meth:`request` on the wire's threads. A caller cancelled while the request is
        under way never gets the response, so it is released (its connection closed, or
        pooled when nothing is left to read) as soon as it arrives."""
        handoff = _Handoff()
        job = self.call(self._request_for, handoff, method, url, headers, params, tls, body)
        try:
            return await job
        except asyncio.CancelledError:
            handoff.abandon()
            raise

    def _request_for(self, handoff: _Handoff, *args: Any) -> WireResponse:
        return handoff.deliver(self.request(*args))

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on one of the wire's threads."""
        if self._executor is None:
            self._executor = _DaemonPool(self._threads, "wire")
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(fn, *args))

    def close(self) -> None:
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _connect(self, scheme: str, netloc: str, tls: Any,
                 proxy: Proxy | None = None) -> http.client.HTTPConnection:
        """A connection to ``netloc``, or to ``proxy``: HTTPS through a CONNECT tunnel
        (TLS end to end, checked against ``netloc``'s name), HTTP to the proxy itself."""
        if scheme == "https":
            conn = http.client.HTTPSConnection(proxy.netloc if proxy else netloc,
                                               timeout=self.connect_timeout,
                                               context=self._tls_context(tls))
            if proxy is not None:
                conn.set_tunnel(netloc, headers={"Proxy-Authorization": proxy.authorization}
                                if proxy.authorization else None)
            return conn
        if scheme != "http":
            raise WireError(f"unsupported URL scheme {scheme!r}")
        return http.client.HTTPConnection(proxy.netloc if proxy else netloc,
                                          timeout=self.connect_timeout)

    def _tls_context(self, tls: Any) -> ssl.SSLContext:
        if isinstance(tls, ssl.SSLContext):
            return tls
        with self._lock:
            if tls is False:
                if self._unverified_tls is None:
                    # Not create_default_context(): loading the system's CAs (~25 ms) is
                    # of no use to a context that verifies nothing.
                    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    self._unverified_tls = ctx
                return self._unverified_tls
            if self._default_tls is None:
                self._default_tls = ssl.create_default_context()
            return self._default_tls

    def _take(self, origin: tuple[Any, ...]) -> http.client.HTTPConnection | None:
        """An idle connection to ``origin`` that the server has not closed meanwhile: one
        it closed is readable (its end of file), as it is when the server sent something
        unasked; either is closed here, before a request (and its body) goes on it.
        Servers and proxies that close every connection after its answer without saying
        so (no ``Connection: close``) would otherwise break every request sent on one."""
        while True:
            with self._lock:
                conns = self._idle.get(origin)
                conn = conns.pop() if conns else None
            if conn is None or not _dropped(conn):
                return conn
            conn.close()

    def _put(self, origin: tuple[Any, ...], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(origin, [])
            if len(conns) < self._keep and not self._closed:
                conns.append(conn)
                return
        conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent
    what nobody asked for). Checked without blocking, as urllib3 does."""
    if conn.sock is None:
        return False  # opened again by the next request
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


def _bare(url: str) -> str:
    """``url`` without its query string, for messages: the query of a URL a registry
    redirected to may be a presigned credential."""
    return url.partition("?")[0]


def _open(conn: http.client.HTTPConnection, netloc: str, proxy: str = "") -> None:
    """``conn.connect()``, with the failures to open a TCP connection told apart (TLS
    failures after it stay plain WireErrors: the server was reached); ``proxy`` names the
    proxy ``conn`` goes through, whose failures these then are."""
    try:
        conn.connect()
    except socket.gaierror as exc:
        raise UnknownHost(netloc, exc.strerror or str(exc), proxy) from exc
    except ssl.SSLError:
        raise
    except OSError as exc:
        if conn.sock is not None:  # connected; the TLS handshake failed
            raise
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise  # this process's limit of open files, not the registry's fault
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {conn.timeout} s"
        else:
            reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
        raise Unreachable(netloc, reason, proxy) from exc


class _Handoff:
    """Hands a response from a worker thread to a caller that may have been cancelled
    meanwhile; an abandoned response is released by whichever side comes last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._resp: WireResponse | None = None

    def deliver(self, resp: WireResponse) -> WireResponse:
        with self._lock:
            if not self._abandoned:
                self._resp = resp
                return resp
        resp.release()
        return resp

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            resp, self._resp = self._resp, None
        if resp is not None:
            resp.release()


class _DaemonPool(Executor):
    """At most ``size`` daemon threads running what is submitted, in order (see the
    module docstring: the process does not wait for them at exit, as it waits for a
    ``ThreadPoolExecutor``'s). A thread is started when none is idle, as the standard
    pool does (``idle`` counts the jobs threads have finished: a submit takes one)."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = threading.Semaphore(0)
        self._threads = 0
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
            if not self._idle.acquire(timeout=0) and self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, name=f"{self._name}_{self._threads}",
                                 daemon=True).start()
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            if future.set_running_or_notify_cancel():
                try:
                    result = call()
                except BaseException as exc:  # handed to the waiting caller
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, call, job
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)  # each thread ends once the jobs before it are done
