"""The request policy every Distribution call goes through: :class:`RegistrySession`
over pooled blocking connections driven by worker threads
(:mod:`registry.client.connections`; connections are reused), with the options, errors
and token scopes it works with. The endpoints themselves are
:class:`registry.client.remote.RegistryClient`.

Policies, in one place (:meth:`RegistrySession._send`):

- Scheme: HTTPS. Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``), hosts in ``insecure`` (all of
  them with ``tls_verify`` False, as podman) are tried over HTTPS without verification first, then
  plain HTTP, as Docker does for insecure registries;
  another host that answers TLS in plain HTTP is an error at once, with the fix (``PlainHttp``).
- Auth: a 401 is answered once per request through :class:`registry.client.auth.HostAuth`
  (Basic, or the Bearer token flow with the request's scopes); requests that meet the
  first 401 together share one answer, and a request refused although it carried the
  credentials raises :class:`registry.client.auth.AuthError`.
- Retries with exponential backoff on connection errors, 5xx, 408 and 429 (waiting as long as
  ``Retry-After`` asks, up to ``max_retry_after``; a 429 also for a request that carries
  bytes: it was not taken in); never on other 4xx. A host
  that does not resolve is not retried; a refused connection is retried twice, quickly,
  unless the host has answered before: then it is restarting, and is waited for up to
  ``outage`` seconds (:mod:`registry.client.refusals`). Either raises :class:`Unreachable`,
  one line naming the host and what to check, and the host is then known to be down:
  every later request to it fails at once.
- Redirects are followed by hand (blob GETs are redirected to storage); the ``Authorization`` header
  only ever goes to the registry's own host, the ``Location``'s query string is sent as it is, and
  messages show it without its query (a presigned URL's signature). A redirect target that refuses
  (400, 401, 403: an expired URL) makes the registry be asked once more, for a fresh one.
- Error responses become :class:`registry.errors.RegistryError` via ``decode_errors``.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

from ..errors import RegistryError, decode_errors
from .answers import decoded, each_said, error_reason, gave_up, retry_delay, same_origin, shown_url
from .auth import Credentials, HostAuth
from .certs_dirs import TlsSettings, default_roots
from .connections import MAX_SMALL_BODY, PlainHttp, TlsClosed, TlsRefused, Wire, WireError, WireResponse
from .connections import Unreachable as _NoConnection
from .docker_config import server_host
from .errors import ClientError
from .refs import is_loopback
from .refusals import Refusals, unreachable_message

__all__ = ["ClientOptions", "RegistrySession", "TransportError", "Unreachable", "pull_scope", "push_scope"]

# 408: the server gave up waiting for the request (containerd retries it too).
_RETRY_STATUS = frozenset({408, 500, 502, 503, 504})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_HOPS = 5  # redirects followed for one request


class TransportError(ClientError):
    """The registry could not be reached (after retries) or answered nonsense."""


class Unreachable(TransportError):
    """No connection to the host could be opened: it does not resolve, refused, or did
    not answer. ``host`` is the ``host[:port]`` that could not be reached."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host


def _timed_out(exc: BaseException) -> bool:
    """The request had no answer in time (not: the connection broke, or was refused)."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)


def pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


def push_scope(name: str) -> str:
    return f"repository:{name}:pull,push"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How to reach registries. ``insecure``: hosts allowed over plain HTTP / unverified TLS;
    ``cert_dir``, else ``<a certs_d root>/<host[:port]>/``: CAs, client certificates (certs_dirs)."""

    ca_cert: Path | None = None
    cert_dir: Path | None = None
    certs_d: tuple[Path, ...] = field(default_factory=default_roots)
    tls_verify: bool = True
    insecure: frozenset[str] = frozenset()
    retries: int = 4
    backoff: float = 0.25
    # A 429 or 5xx whose Retry-After asks for longer than this is not waited for.
    max_retry_after: float = 60
    connections: int = 16
    credentials: dict[str, Credentials] = field(default_factory=dict)
    # Loopback registries are insecure registries (Docker's default); False treats them
    # like any other host (certificates verified, no plain HTTP).
    loopback_insecure: bool = True
    # A request with no answer in read_timeout seconds is retried (retries times).
    read_timeout: float = 120
    # Told "waiting for HOST (no answer for N s ...)" every notice_after seconds while a
    # host answers none of the requests waiting on it, and when one is retried for that:
    # a registry that accepts connections and never answers would otherwise keep a
    # command silent for minutes.
    notice: Callable[[str], None] | None = field(default=None, compare=False)
    notice_after: float = 30
    # A host that answered earlier and now refuses connections (restarting) is retried for
    # up to this many seconds from its first refusal (0: twice, quickly, as any other).
    outage: float = 30


@dataclass(slots=True)
class _Silence:
    """The requests waiting for one host's answer, and since when it has answered none."""

    waiting: int = 0
    since: float = 0.0
    failing: bool = False  # the last request ended without an answer: the silence goes on
    watcher: asyncio.Task[None] | None = None


class RegistrySession:
    """Connections, auth and the request policy for every registry an operation touches;
    :class:`registry.client.remote.RegistryClient` adds the endpoints. Use as ``async with``."""

    def __init__(self, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self._wire: Wire | None = None
        self._bases: dict[str, str] = {}
        self._auth: dict[str, HostAuth] = {}
        self._down: dict[str, Unreachable] = {}  # host[:port] -> why it could not be reached
        self._reached: set[str] = set()  # hosts that have answered a request
        self._gates: dict[str, asyncio.Lock] = {}  # one request at a time until then
        self._base_lock = asyncio.Lock()
        self._silences: dict[str, _Silence] = {}
        self._challenges: dict[str, str] = {}  # host[:port] -> its /v2/'s WWW-Authenticate
        self._insecure_hosts = {server_host(h) for h in self.options.insecure}  # http://reg too, as Docker
        self._tls = TlsSettings(self.options.ca_cert, self.options.cert_dir, self.options.certs_d)
        self._refusals = Refusals(self.options.backoff, self.options.outage, self.options.notice)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        watchers = [s.watcher for s in self._silences.values() if s.watcher is not None]
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    @property
    def wire(self) -> Wire:
        """The connections every request goes on (see :meth:`_send`)."""
        if self._wire is None:
            self._wire = Wire(connect_timeout=min(30, self.options.read_timeout),
                              read_timeout=self.options.read_timeout, idle=self.options.connections)
        return self._wire

    def auth(self, host: str) -> HostAuth:
        if host not in self._auth:
            self._auth[host] = HostAuth(host, self.options.credentials.get(host))
        return self._auth[host]

    # --- scheme and transport -------------------------------------------------------------
    def _insecure(self, host: str) -> bool:
        """Certificate unchecked, plain HTTP allowed (``tls_verify`` False: every host, as podman)."""
        return (not self.options.tls_verify or (self.options.loopback_insecure and is_loopback(host))
                or host in self._insecure_hosts)

    async def base_url(self, host: str) -> str:
        """``https://host`` or, for insecure hosts that do not speak TLS, ``http://host``."""
        async with self._base_lock:
            if host in self._bases:
                return self._bases[host]
            if host in self._down:
                raise self._down[host]
            base = f"https://{host}"
            if self._insecure(host):
                try:
                    # Unreachable (a TransportError) goes up: nothing answers either way.
                    await _drain(await self._transmit("GET", f"{base}/v2/", {}, None, None))
                except TlsRefused as exc:  # it speaks TLS, and wants a client certificate
                    raise TransportError(str(exc)) from exc
                except TlsClosed:
                    pass  # it speaks TLS (the handshake was done): plain HTTP gets no further
                except (TimeoutError, WireError, ssl.SSLError):
                    base = f"http://{host}"
            self._bases[host] = base
            return base

    def _ssl_for(self, url: str, insecure_ok: bool = True) -> Any:
        """``url``'s host's TLS settings; unverified for an insecure host (``insecure_ok``)."""
        host = urlsplit(url).netloc
        return self._tls.for_host(host, self.options.tls_verify and not (insecure_ok and self._insecure(host)))

    async def _send(
        self,
        method: str,
        host: str,
        url: str,
        *,
        scopes: frozenset[str] = frozenset(),
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        redirects: bool | None = None,
        retries: int | None = None,
    ) -> WireResponse:
        """Send one request with auth, retries and redirects (``redirects`` None: followed
        for GET and HEAD); the caller releases the returned response. Statuses outside
        ``ok`` raise RegistryError.

        The request goes on a pooled blocking connection (:mod:`registry.client.connections`), sent from
        a worker thread; the answer is a :class:`registry.client.connections.WireResponse`, whose body
        may be read by a worker thread straight into the store.
        """
        if retries is None:
            retries = self.options.retries
        if not url.startswith(("http://", "https://")):
            url = await self.base_url(host) + url
        if redirects is None:
            redirects = method in ("GET", "HEAD")
        auth = self.auth(host)
        answered: set[str] = set()  # the hosts whose 401 this request has answered
        attempt = 0
        hops = 0
        asked = (url, params)  # the registry's own URL, asked again when a redirect fails
        redirected = asked_again = False
        while True:
            send_headers = dict(headers or {})
            same_host = same_origin(url, host)
            # Another host a request was redirected to gets nothing of the registry's
            # auth; only what it asks for itself, with its own credentials, if any.
            here = auth if same_host else self.auth(urlsplit(url).netloc)
            await here.renew(self._fetch, scopes)
            sent = here.header(scopes)
            if sent:
                send_headers["Authorization"] = sent
            try:
                resp = await self._transmit(method, url, send_headers, params, data)
            except (TimeoutError, WireError) as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno in (errno.EMFILE, errno.ENFILE):
                    raise cause from None  # this process's limit of open files: no retry helps
                if isinstance(exc, (PlainHttp, TlsRefused)):
                    raise TransportError(str(exc)) from exc  # asked again, it answers the same
                # A WireError names the request already.
                what = (str(exc) if isinstance(exc, WireError)
                        else f"{method} {shown_url(url, host)}: {exc or type(exc).__name__}")
                if attempt >= retries:
                    raise TransportError(
                        f"{what} (after {attempt + 1} attempts); check that the registry is "
                        "running and reachable"
                    ) from exc
                if self.options.notice is not None and _timed_out(exc):
                    self.options.notice(
                        f"waiting for {urlsplit(url).netloc} (no answer in "
                        f"{self.options.read_timeout:g} s; retrying, attempt {attempt + 2} of {retries + 1})")
                await asyncio.sleep(self.options.backoff * 2**attempt)
                attempt += 1
                continue
            if resp.status in ok:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "") if resp.status == 401 else ""
            if resp.status == 401 and (same_host or challenge):
                answer = await _drain(resp)
                if not challenge and here.host not in answered:
                    # A 401 without a challenge (gcr.io's): the /v2/ ping's, which Docker
                    # and containers/image answer every request with.
                    challenge = await self._ping_challenge(url)
                if (here.host not in answered and challenge
                        and await here.answer(self._fetch, challenge, scopes, sent)):
                    answered.add(here.host)
                    continue
                reason = "; ".join(e.message for e in decode_errors(401, answer))
                raise here.refused(challenge, sent, scopes, reason)
            location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
            if redirects and location:
                await _drain(resp)
                if hops == _MAX_HOPS:
                    raise TransportError(f"{method} {shown_url(asked[0], host)}: redirected more "
                                         f"than {_MAX_HOPS} times (last to {shown_url(url, host)}); "
                                         "the registry or its proxy redirects in a loop")
                url = urljoin(url, location)
                hops += 1
                params = None
                redirected = True
                continue
            answer = await _drain(resp)
            if redirected and resp.status in (400, 401, 403) and not asked_again:
                # The storage a blob GET was sent to refused its presigned URL (expired,
                # or its clock is off): once, the registry is asked for a fresh one.
                (url, params), hops, redirected, asked_again = asked, 0, False, True
                continue
            throttled = resp.status == 429
            if throttled or resp.status in _RETRY_STATUS:
                # Throttled requests were not taken in: retried even when they carry bytes.
                delay, wait = retry_delay(resp.headers.get("Retry-After"), attempt,
                                          self.options.retries if throttled else retries,
                                          self.options.backoff, self.options.max_retry_after)
                if delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                if attempt or wait is not None:
                    raise _error(resp, answer, f"{method} {shown_url(url, host)}",
                                 gave_up(attempt, wait, self.options.max_retry_after, throttled))
            what = f"{method} {shown_url(url, host)}"
            if redirected:
                what = f"{what} (where {host} redirected {method} {urlsplit(asked[0]).path})"
                if asked_again and resp.status in (400, 401, 403):
                    what += ": refused twice, the registry's storage or its presigned URLs are amiss"
            raise _error(resp, answer, what)

    async def _ping_challenge(self, url: str) -> str:
        """The ``WWW-Authenticate`` that ``GET /v2/`` of ``url``'s host answers with
        (asked once per host; "" when there is none)."""
        parts = urlsplit(url)
        if parts.netloc not in self._challenges:
            try:
                resp = await self._transmit("GET", f"{parts.scheme}://{parts.netloc}/v2/", {}, None, None)
            except (TimeoutError, WireError):
                return ""
            self._challenges[parts.netloc] = (resp.headers.get("WWW-Authenticate", "")
                                              if resp.status == 401 else "")
            await _drain(resp)
        return self._challenges[parts.netloc]

    async def _transmit(self, method: str, url: str, headers: dict[str, str],
                        params: dict[str, str] | None, data: bytes | None) -> WireResponse:
        """One request on the wire, with the policy for hosts that cannot be reached.

        Until a host has answered once, its requests go one at a time: when it is down,
        the first one finds out (a name that does not resolve at once; a refused
        connection after :mod:`.refusals`' retries) and the others fail with the same
        :class:`Unreachable` without trying, instead of each retrying on its own."""
        netloc = urlsplit(url).netloc
        gate = None
        if netloc not in self._reached:
            gate = self._gates.setdefault(netloc, asyncio.Lock())
            await gate.acquire()
        try:
            attempt = 0
            while True:
                if netloc in self._down:
                    raise self._down[netloc]
                silence = self._waiting(netloc)
                answered = False
                try:
                    resp = await self.wire.send(method, url, headers, params, self._ssl_for(url),
                                                data)
                    answered = True
                except WireError as exc:
                    if not isinstance(exc, _NoConnection):
                        # Connected, then the request broke (such as the TLS probe of a
                        # registry that speaks plain HTTP): the host is up.
                        self._reached.add(netloc)
                        raise
                    # Nothing was sent: safe to try again.
                    if (delay := self._refusals.retry_in(netloc, exc, attempt,
                                                         netloc in self._reached)) is not None:
                        await asyncio.sleep(delay)
                        attempt += 1
                        continue
                    self._down[netloc] = Unreachable(exc.netloc, unreachable_message(
                        exc, self._refusals.gave_up(netloc)))
                    raise self._down[netloc] from exc
                finally:
                    self._done_waiting(silence, answered)
                self._reached.add(netloc)
                self._refusals.answered(netloc)
                return resp
        finally:
            if gate is not None:
                gate.release()

    def _waiting(self, netloc: str) -> _Silence:
        """A request to ``netloc`` now waits for its answer (see ``ClientOptions.notice``)."""
        silence = self._silences.setdefault(netloc, _Silence())
        if silence.waiting == 0 and not silence.failing:
            silence.since = time.monotonic()
        silence.waiting += 1
        if self.options.notice is not None and (silence.watcher is None or silence.watcher.done()):
            silence.watcher = asyncio.ensure_future(self._watch(netloc, silence))
        return silence

    @staticmethod
    def _done_waiting(silence: _Silence, answered: bool) -> None:
        silence.waiting -= 1
        silence.failing = not answered
        if answered:
            silence.since = time.monotonic()

    async def _watch(self, netloc: str, silence: _Silence) -> None:
        every, notice = self.options.notice_after, self.options.notice
        assert notice is not None
        while silence.waiting > 0:
            quiet_for = time.monotonic() - silence.since
            # At the next whole multiple of `every` of silence (an answer meanwhile moves it).
            await asyncio.sleep(max(0.01, every * (quiet_for // every + 1) - quiet_for))
            quiet_for = time.monotonic() - silence.since
            if silence.waiting > 0 and quiet_for >= every:
                notice(f"waiting for {netloc} (no answer for {quiet_for:.0f} s; still trying)")

    async def _fetch(self, url: str, params: list[tuple[str, str]],
                     headers: dict[str, str], data: bytes | None = None) -> tuple[int, bytes]:
        """A GET (a POST of ``data``) to a token server (no auth or redirects). A 429 or 5xx is retried as
        :meth:`_send` retries (as long as ``Retry-After`` asks, up to ``max_retry_after``),
        a broken connection, and a restarting token server as a registry; the last answer."""
        netloc, attempt, refused = urlsplit(url).netloc, 0, 0
        while True:
            try:
                resp = await self.wire.send("GET" if data is None else "POST", url, headers,
                                            params, self._ssl_for(url, False), data)
            except WireError as exc:
                if isinstance(exc, _NoConnection):  # waited for, or raised (.refusals)
                    await self._refusals.ride_out(netloc, exc, refused, netloc in self._reached)
                    refused += 1
                    continue
                if attempt >= self.options.retries:
                    raise
                await asyncio.sleep(self.options.backoff * 2**attempt)
                attempt += 1
                continue
            self._reached.add(netloc)
            self._refusals.answered(netloc)
            try:
                status, body = resp.status, await _read(resp)
            finally:
                resp.release()
            if status == 429 or status in _RETRY_STATUS:
                delay, _ = retry_delay(resp.headers.get("Retry-After"), attempt,
                                       self.options.retries, self.options.backoff,
                                       self.options.max_retry_after)
                if delay is not None:
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
            return status, body

    async def _request(self, method: str, host: str, url: str, **kw: Any) -> tuple[WireResponse, bytes]:
        resp = await self._send(method, host, url, **kw)
        try:
            body = await _read(resp)
        finally:
            resp.release()
        return resp, body


async def _read(resp: WireResponse, *, strict: bool = True) -> bytes:
    """A small body, decompressed when it came with a ``Content-Encoding`` (``strict``
    False: as it came when it does not decompress, for an error's words)."""
    body = await resp.read()
    encoding = resp.headers.get("Content-Encoding")
    if not encoding:
        return body
    try:
        if len(body) <= 64 << 10:
            return decoded(body, encoding, MAX_SMALL_BODY)
        # Up to 4 MiB to inflate: not on the event loop.
        return await asyncio.to_thread(decoded, body, encoding, MAX_SMALL_BODY)
    except ValueError as exc:
        if not strict:
            return body
        raise TransportError(f"{resp.url.partition('?')[0]}: {exc}") from None


async def _drain(resp: WireResponse) -> bytes:
    """The (small) body of a response that is not returned to the caller, then released."""
    try:
        return await _read(resp, strict=False)
    finally:
        resp.release()


def _error(resp: WireResponse, body: bytes, what: str, after: str = "") -> RegistryError:
    errors = decode_errors(resp.status, body)
    err = RegistryError.many(errors)
    reason = error_reason(resp.status, body, err.message)
    if reason is not None:
        err.message = reason
        err.args = (f"{err.code.code}: {reason}",)
    err.args = (f"{what}: HTTP {resp.status} {each_said(err)}{after}",)
    return err

