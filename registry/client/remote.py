"""An OCI Distribution client over pooled blocking connections driven by worker threads
(:mod:`registry.client.connections`; connections are reused).

Covers the spec's pull, push and content-discovery endpoints: ``/v2/`` ping, manifests
GET/HEAD/PUT, blobs HEAD/GET (with ``Range``), uploads (POST, PATCH, PUT, status GET,
cross-repository mount), tag lists and referrers, plus pybuild's blob-recipe extension.

Policies, in one place (:meth:`RegistryClient._send`):

- Scheme: HTTPS. Loopback hosts (``localhost``, ``127.0.0.0/8``, ``::1``) and hosts in
  ``insecure`` are tried over HTTPS without verification first, then plain HTTP, as
  Docker does for insecure registries.
- Auth: a 401 is answered once per request through :class:`registry.client.auth.HostAuth`
  (Basic, or the Bearer token flow with the request's scopes); requests that meet the
  first 401 together share one answer, and a request refused although it carried the
  credentials raises :class:`registry.client.auth.AuthError`.
- Retries with exponential backoff on connection errors and 5xx; never on 4xx. A host
  that does not resolve is not retried; a refused connection is retried twice, quickly.
  Either raises :class:`Unreachable`, one line naming the host and what to check, and
  the host is then known to be down: every later request to it fails at once.
- Redirects are followed by hand (blob GETs are redirected to storage); the
  ``Authorization`` header only ever goes to the registry's own host.
- Error responses become :class:`registry.errors.RegistryError` via ``decode_errors``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from urllib.parse import urljoin, urlsplit

from cas import Digest

from ..errors import RegistryError, decode_errors
from ..oci import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST, Index
from .auth import Credentials, HostAuth
from .connections import UnknownHost, Wire, WireError, WireResponse
from .connections import Unreachable as _NoConnection
from .errors import ClientError
from .refs import ImageRef, is_loopback

__all__ = [
    "MANIFEST_ACCEPT",
    "ClientOptions",
    "RegistryClient",
    "TransportError",
    "Unreachable",
    "pull_scope",
    "push_scope",
]

MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
RECIPE_ENDPOINT = "_pybuild/blob/recipe"
_MAX_MANIFEST = 4 << 20
_RETRY_STATUS = frozenset({500, 502, 503, 504})
# A refused connection is tried this many more times (a registry restarting), no more.
_REFUSED_RETRIES = 2


class TransportError(ClientError):
    """The registry could not be reached (after retries) or answered nonsense."""


class Unreachable(TransportError):
    """No connection to the host could be opened: it does not resolve, refused, or did
    not answer. ``host`` is the ``host[:port]`` that could not be reached."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host


def _unreachable(exc: _NoConnection) -> Unreachable:
    host = exc.netloc
    if isinstance(exc, UnknownHost):
        name = urlsplit(f"//{host}").hostname or host
        return Unreachable(host, f"registry host {name} is unknown ({exc.reason}); check the "
                                 "registry's host name, and the DNS set-up")
    return Unreachable(host, f"cannot connect to registry {host} ({exc.reason}): is the "
                             f"registry running, and is {host} its address and port?")


def pull_scope(name: str) -> str:
    return f"repository:{name}:pull"


def push_scope(name: str) -> str:
    return f"repository:{name}:pull,push"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How to reach registries. ``insecure``: hosts allowed over plain HTTP / unverified TLS."""

    ca_cert: Path | None = None
    tls_verify: bool = True
    insecure: frozenset[str] = frozenset()
    retries: int = 4
    backoff: float = 0.25
    connections: int = 16
    credentials: dict[str, Credentials] = field(default_factory=dict)
    # Loopback registries are insecure registries (Docker's default); False treats them
    # like any other host (certificates verified, no plain HTTP).
    loopback_insecure: bool = True


class RegistryClient:
    """One session for every registry an operation touches. Use as ``async with``."""

    def __init__(self, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self._wire: Wire | None = None
        self._bases: dict[str, str] = {}
        self._auth: dict[str, HostAuth] = {}
        self._down: dict[str, Unreachable] = {}  # host[:port] -> why it could not be reached
        self._reached: set[str] = set()  # hosts that have answered a request
        self._gates: dict[str, asyncio.Lock] = {}  # one request at a time until then
        self._base_lock = asyncio.Lock()
        verify: Any = None
        if not self.options.tls_verify:
            verify = False
        elif self.options.ca_cert is not None:
            verify = ssl.create_default_context(cafile=str(self.options.ca_cert))
        self._ssl = verify

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    @property
    def wire(self) -> Wire:
        """The connections every request goes on (see :meth:`_send`)."""
        if self._wire is None:
            self._wire = Wire(connect_timeout=30, read_timeout=120, idle=self.options.connections)
        return self._wire

    def auth(self, host: str) -> HostAuth:
        if host not in self._auth:
            self._auth[host] = HostAuth(host, self.options.credentials.get(host))
        return self._auth[host]

    # --- scheme and transport -------------------------------------------------------------
    def _insecure(self, host: str) -> bool:
        return (self.options.loopback_insecure and is_loopback(host)) or host in self.options.insecure

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
                except (TimeoutError, WireError, ssl.SSLError):
                    base = f"http://{host}"
            self._bases[host] = base
            return base

    def _ssl_for(self, url: str) -> Any:
        host = urlsplit(url).netloc
        if url.startswith("https://") and self._insecure(host):
            return False
        return self._ssl

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
        redirects: bool = False,
        retries: int | None = None,
    ) -> WireResponse:
        """Send one request with auth, retries and (optionally) redirects; the caller
        releases the returned response. Statuses outside ``ok`` raise RegistryError.

        The request goes on a pooled blocking connection (:mod:`registry.client.connections`), sent from
        a worker thread; the answer is a :class:`registry.client.connections.WireResponse`, whose body
        may be read by a worker thread straight into the store.
        """
        if retries is None:
            retries = self.options.retries
        if not url.startswith(("http://", "https://")):
            url = await self.base_url(host) + url
        auth = self.auth(host)
        answered = False
        attempt = 0
        hops = 0
        while True:
            send_headers = dict(headers or {})
            same_host = urlsplit(url).netloc == host
            sent = auth.header(scopes) if same_host else None
            if sent:
                send_headers["Authorization"] = sent
            try:
                resp = await self._transmit(method, url, send_headers, params, data)
            except (TimeoutError, WireError) as exc:
                if attempt >= retries:
                    raise TransportError(
                        f"{method} {url}: {exc or type(exc).__name__} (after {attempt + 1} "
                        "attempts); check that the registry is running and reachable"
                    ) from exc
                await asyncio.sleep(self.options.backoff * 2**attempt)
                attempt += 1
                continue
            if resp.status in ok:
                return resp
            if resp.status == 401 and same_host:
                challenge = resp.headers.get("WWW-Authenticate", "")
                answer = await _drain(resp)
                if (not answered and challenge
                        and await auth.answer(self._fetch, challenge, scopes, sent)):
                    answered = True
                    continue
                reason = "; ".join(e.message for e in decode_errors(401, answer))
                raise auth.refused(challenge, sent, scopes, reason)
            if redirects and resp.status in (301, 302, 303, 307, 308) and hops < 5:
                location = resp.headers.get("Location")
                resp.release()
                if location:
                    url = urljoin(url, location)
                    hops += 1
                    params = None
                    continue
            answer = await _drain(resp)
            if resp.status in _RETRY_STATUS and attempt < retries:
                await asyncio.sleep(self.options.backoff * 2**attempt)
                attempt += 1
                continue
            raise _error(resp, answer, f"{method} {url}")

    async def _transmit(self, method: str, url: str, headers: dict[str, str],
                        params: dict[str, str] | None, data: bytes | None) -> WireResponse:
        """One request on the wire, with the policy for hosts that cannot be reached.

        Until a host has answered once, its requests go one at a time: when it is down,
        the first one finds out (a name that does not resolve at once; a refused
        connection after ``_REFUSED_RETRIES`` quick retries) and the others fail with the
        same :class:`Unreachable` without trying, instead of each retrying on its own."""
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
                try:
                    resp = await self.wire.send(method, url, headers, params, self._ssl_for(url),
                                                data)
                except _NoConnection as exc:
                    refused = isinstance(exc.__cause__, ConnectionRefusedError)
                    if refused and attempt < _REFUSED_RETRIES:  # nothing was sent: safe
                        await asyncio.sleep(self.options.backoff * 2**attempt)
                        attempt += 1
                        continue
                    self._down[netloc] = _unreachable(exc)
                    raise self._down[netloc] from exc
                self._reached.add(netloc)
                return resp
        finally:
            if gate is not None:
                gate.release()

    async def _fetch(self, url: str, params: list[tuple[str, str]],
                     headers: dict[str, str]) -> tuple[int, bytes]:
        """A plain GET (no auth, retries or redirects): for token servers."""
        resp = await self.wire.send("GET", url, headers, params, self._ssl)
        try:
            return resp.status, await resp.read()
        finally:
            resp.release()

    async def _request(self, method: str, host: str, url: str, **kw: Any) -> tuple[WireResponse, bytes]:
        resp = await self._send(method, host, url, **kw)
        try:
            body = await resp.read()
        finally:
            resp.release()
        return resp, body

    # --- API ---------------------------------------------------------------------------
    async def ping(self, host: str) -> None:
        """``GET /v2/`` (authenticating if asked); raises if the host is no registry."""
        await self._request("GET", host, "/v2/")

    async def get_manifest(self, ref: ImageRef) -> tuple[bytes, str, Digest]:
        """The manifest's exact bytes, media type and digest (verified when pinned)."""
        resp, body = await self._request(
            "GET", ref.api_host, f"/v2/{ref.name}/manifests/{ref.reference}",
            scopes=frozenset({pull_scope(ref.name)}), headers={"Accept": MANIFEST_ACCEPT},
        )
        if len(body) > _MAX_MANIFEST:
            raise TransportError(f"manifest {ref} is {len(body)} bytes, over the 4 MiB limit")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc_type = json.loads(body).get("mediaType")
        except (ValueError, AttributeError):
            doc_type = None
        media_type = doc_type or media_type or OCI_MANIFEST
        expected = ref.digest
        if expected is None and resp.headers.get("Docker-Content-Digest"):
            expected = Digest.parse(resp.headers["Docker-Content-Digest"])
        digest = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise TransportError(
                f"manifest {ref} does not match its digest: expected {expected}, got {digest}"
            )
        return body, media_type, Digest.of(body) if expected is None else digest

    async def head_manifest(self, ref: ImageRef) -> Digest | None:
        """The digest ``ref`` resolves to, or None if the registry does not have it."""
        try:
            resp, _ = await self._request(
                "HEAD", ref.api_host, f"/v2/{ref.name}/manifests/{ref.reference}",
                scopes=frozenset({pull_scope(ref.name)}), headers={"Accept": MANIFEST_ACCEPT},
            )
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        value = resp.headers.get("Docker-Content-Digest")
        return Digest.parse(value) if value else None

    async def put_manifest(self, ref: ImageRef, body: bytes, media_type: str) -> Digest:
        _resp, _ = await self._request(
            "PUT", ref.api_host, f"/v2/{ref.name}/manifests/{ref.reference}",
            scopes=frozenset({push_scope(ref.name)}), headers={"Content-Type": media_type},
            data=body, ok=(200, 201),
        )
        return Digest.of(body)

    async def head_blob(self, host: str, name: str, digest: Digest, *, push: bool = False) -> tuple[int, bool] | None:
        """``(size, accepts_ranges)`` if ``name`` has the blob, else None."""
        scope = push_scope(name) if push else pull_scope(name)
        try:
            resp, _ = await self._request(
                "HEAD", host, f"/v2/{name}/blobs/{digest}", scopes=frozenset({scope}), redirects=True,
            )
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        ranges = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
        return int(resp.headers.get("Content-Length", "-1")), ranges

    @asynccontextmanager
    async def open_blob(
        self, host: str, name: str, digest: Digest, start: int = 0, end: int | None = None
    ) -> AsyncIterator[WireResponse]:
        """A blob GET, from ``start`` to ``end`` (inclusive) when given, following redirects;
        a worker thread reads the body (:meth:`registry.client.connections.WireResponse.readinto`).

        A ranged request that gets a whole-blob 200 instead of 206 raises TransportError
        (the caller then knows the server ignores ranges)."""
        headers = {}
        ranged = start > 0 or end is not None
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        resp = await self._send(
            "GET", host, f"/v2/{name}/blobs/{digest}", scopes=frozenset({pull_scope(name)}),
            headers=headers, ok=(200, 206), redirects=True,
        )
        try:
            if ranged and resp.status != 206:
                raise TransportError(f"blob {digest}: the registry ignored Range {headers['Range']}")
            yield resp
        finally:
            resp.release()

    async def start_upload(
        self, host: str, name: str, *, mount: Digest | None = None, source: str | None = None
    ) -> str | None:
        """POST an upload; with ``mount``/``source`` try a cross-repository mount first.

        Returns the upload URL, or None if the blob was mounted."""
        scopes = {push_scope(name)}
        params = None
        if mount is not None and source is not None:
            scopes.add(pull_scope(source))
            params = {"mount": str(mount), "from": source}
        resp, _ = await self._request(
            "POST", host, f"/v2/{name}/blobs/uploads/", scopes=frozenset(scopes),
            params=params, ok=(201, 202), headers={"Content-Length": "0"},
        )
        if resp.status == 201:
            return None
        return self._location(resp, host)

    def _location(self, resp: WireResponse, host: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise TransportError(f"{host} answered an upload request without a Location")
        return urljoin(str(resp.url), location)

    async def upload_offset(self, host: str, name: str, url: str) -> int:
        """Bytes the upload session at ``url`` holds (spec: GET upload status, ``Range``)."""
        resp, _ = await self._request(
            "GET", host, url, scopes=frozenset({push_scope(name)}), ok=(204, 200)
        )
        value = resp.headers.get("Range", "").removeprefix("bytes=")
        _start, _, end = value.partition("-")
        # "0-0" is what registries report for an empty session too (and Distribution
        # says "0--1"); sessions here never hold a single byte, so both mean 0.
        if not value or end in ("0", "-1") or not end.isdigit():
            return 0
        return int(end) + 1

    async def patch_upload(self, host: str, name: str, url: str, data: bytes, start: int) -> str:
        """Send one chunk at ``start``; returns the URL for the next request."""
        resp, _ = await self._request(
            "PATCH", host, url, scopes=frozenset({push_scope(name)}), data=data, ok=(202, 204),
            retries=0, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(data) - 1}",
                "Content-Length": str(len(data)),
            },
        )
        return self._location(resp, host)

    async def finish_upload(
        self, host: str, name: str, url: str, digest: Digest, data: bytes = b""
    ) -> None:
        """PUT ``?digest=``, with the remaining bytes (all of them for a monolithic upload).

        Not re-sent after a broken connection when it carries bytes (see :meth:`_send`)."""
        sep = "&" if "?" in url else "?"
        await self._request(
            "PUT", host, f"{url}{sep}digest={digest}", scopes=frozenset({push_scope(name)}),
            data=data, ok=(201, 204), retries=0 if data else None,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )

    async def tags(self, host: str, name: str) -> list[str]:
        """Every tag of ``name`` (following ``Link`` pagination)."""
        out: list[str] = []
        url = f"/v2/{name}/tags/list"
        while url:
            resp, body = await self._request("GET", host, url, scopes=frozenset({pull_scope(name)}))
            out.extend(json.loads(body).get("tags") or [])
            link = resp.headers.get("Link", "")
            url = link[link.find("<") + 1 : link.find(">")] if "rel=\"next\"" in link else ""
        return out

    async def referrers(self, host: str, name: str, digest: Digest) -> Index:
        _, body = await self._request(
            "GET", host, f"/v2/{name}/referrers/{digest}", scopes=frozenset({pull_scope(name)}),
            headers={"Accept": OCI_INDEX},
        )
        return Index.parse(body)

    async def has_recipes(self, host: str, name: str) -> bool:
        """Whether the repository lists pybuild's recipe extension (``_oci/ext/discover``)."""
        try:
            _, body = await self._request(
                "GET", host, f"/v2/{name}/_oci/ext/discover", scopes=frozenset({pull_scope(name)})
            )
            doc = json.loads(body)
        except (RegistryError, ValueError):
            return False
        return any(
            RECIPE_ENDPOINT in (ext.get("endpoints") or [])
            for ext in doc.get("extensions") or []
            if isinstance(ext, dict)
        )

    async def recipe(self, host: str, name: str, digest: Digest) -> list[tuple[int, int, str]]:
        """The blob's pieces as ``(offset, length, blake3 key)``, checked to tile the blob."""
        _, body = await self._request(
            "GET", host, f"/v2/{name}/{RECIPE_ENDPOINT}", params={"digest": str(digest)},
            scopes=frozenset({pull_scope(name)}),
        )
        doc = json.loads(body)
        pieces = [(int(p["offset"]), int(p["length"]), str(p["key"])) for p in doc["pieces"]]
        pos = 0
        for offset, length, _ in pieces:
            if offset != pos or length <= 0:
                raise TransportError(f"recipe of {digest} has a gap or overlap at byte {pos}")
            pos += length
        if pos != int(doc["size"]):
            raise TransportError(f"recipe of {digest} covers {pos} bytes, not {doc['size']}")
        return pieces


async def _drain(resp: WireResponse) -> bytes:
    """The (small) body of a response that is not returned to the caller, then released."""
    try:
        return await resp.read()
    finally:
        resp.release()


def _error(resp: WireResponse, body: bytes, what: str) -> RegistryError:
    errors = decode_errors(resp.status, body)
    err = RegistryError.many(errors)
    err.args = (f"{what}: HTTP {resp.status} {err.args[0]}",)
    return err
