"""The pull-through cache: manifests and blobs this registry does not hold come from an
upstream registry, are verified, stored and then served from the store.

Configured by ``proxy`` (:mod:`registry.server.proxy_config`). Per request:

- **Which upstream**: ``?ns=<host>`` (containerd's mirrors), else the repository name's
  first component when it is an upstream's ``host``, else the ``remoteurl`` upstream;
  none: the request is served from local content only.
- **Manifest GET/HEAD by tag**: served from the store while the tag is younger than the
  upstream's ``ttl`` (since it was last asked upstream); otherwise the upstream is asked
  (a HEAD; a GET only when the digest changed), the manifest is verified against its
  digest, stored and the tag moved. When the upstream fails (down, 5xx, refused) the
  cached manifest is served; without one the error says which upstream failed.
  In a mixed registry a tag pushed here is never replaced from upstream. A cached tag
  whose check has gone on for ``_STALE_AFTER`` (an upstream that hangs, or a network
  that drops packets, answers nothing for minutes) is served as it is; the check goes
  on and moves the tag when it ends.
- **Manifest by digest**: from the store, else fetched once and stored.
- **Blob GET/HEAD**: from the store when the repository holds it; when the store holds the
  same bytes for another repository they are linked (no transfer); otherwise the blob is
  read from upstream once, into a ``cas`` ingest (stored as pieces, so similar images
  cost only their differences) that commits only if digest and length match and links
  the blob into the repository. Plain GETs meanwhile stream it as it arrives
  (:mod:`registry.server.proxy_blobs`: the last byte only after the verified commit);
  HEAD, ``Range`` and conditional requests wait for the store.
- **Single flight**: concurrent requests for the same tag, manifest or blob share one upstream
  request (by local repository and reference) in its own task, which no client going away cancels.
- **Writes** (push, delete) are refused with 405 UNSUPPORTED, as in Distribution, unless
  ``proxy.mixed`` is set.

A host that cannot be reached is not asked again for ``_DOWN_SECONDS`` (cached content is served meanwhile).
Every wait on an upstream is bounded, a blob body that stops arriving included
(:mod:`registry.server.proxy_upstream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from cas import (
    Digest,
    DigestMismatch,
    InvalidDigest,
    SizeMismatch,
    SourceFailed,
    UnsupportedDigestAlgorithm,
)

from ..client.auth import AuthError
from ..client.errors import ClientError
from ..client.refs import ImageRef
from ..client.remote import RegistryClient, Unreachable
from ..errors import BLOB_UNKNOWN, MANIFEST_UNKNOWN, NAME_INVALID, UNAVAILABLE, UNSUPPORTED, RegistryError
from ..names import is_valid_name, parse_digest, parse_pull_reference, parse_reference
from ..oci import InvalidObject, parse_manifest
from . import blobs, manifests
from .config import ServerConfig
from .metadata import ManifestRecord
from .proxy_blobs import BlobFlight, held_locally, receive_blob, stream_flight, streamable
from .proxy_config import Upstream, upstream_from_remoteurl
from .proxy_upstream import no_credentials, upstream_client
from .state import REGISTRY, CachedManifest, Registry, holder

__all__ = ["PROXY", "Proxy", "get_blob", "get_manifest", "proxy_context", "refuse_write"]

log = logging.getLogger("pybuild.registry.proxy")
T = TypeVar("T")

_DOWN_SECONDS = 5.0  # an unreachable upstream is left alone this long
_STALE_AFTER = 3.0  # a cached tag is served once its upstream check has taken this long
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "docker.io"})
_MAX_CHECKED = 100_000  # tag check times remembered in memory (the database has them all)


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """Where a request's content comes from: ``remote`` in ``upstream``, kept as ``local``."""

    upstream: Upstream
    remote: str
    local: str
    ttl: float


class _UpstreamFailed(Exception):
    """The upstream could not answer; ``error`` is what a client without cache gets."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


class Proxy:
    """The running pull-through cache: one client per upstream, the flights in progress."""

    def __init__(self, config: ServerConfig) -> None:
        self.mixed = config.proxy_mixed
        self.ttl = config.proxy_ttl
        self.default: Upstream | None = None
        if config.proxy_remoteurl:
            self.default = upstream_from_remoteurl(
                config.proxy_remoteurl, config.proxy_username, config.proxy_password,
                config.proxy_ttl,
            )
        self.by_host = {u.host: u for u in config.proxy_upstreams}
        self.by_prefix = {u.prefix[:-1]: u for u in config.proxy_upstreams}
        self._clients: dict[Upstream, RegistryClient] = {}
        self._busy: dict[RegistryClient, int] = {}  # requests under way, per client
        self._retired: set[RegistryClient] = set()  # replaced; closed once idle
        self._down_until: dict[str, float] = {}
        self._flights: dict[tuple[str, ...], asyncio.Task[Any]] = {}
        self._since: dict[tuple[str, ...], float] = {}  # when each flight started
        # (repo, tag) -> (digest, time.time() of the last upstream check)
        self._checked: dict[tuple[str, str], tuple[str, float]] = {}
        self._blob_flights: dict[tuple[str, ...], BlobFlight] = {}
        # blob key -> [requests checking the store for it, its flights ended since]
        self._checking: dict[tuple[str, ...], list[int]] = {}

    # --- routing ---------------------------------------------------------------------
    def route(self, request: web.Request, name: str) -> ProxyRoute | None:
        ns = request.query.get("ns")
        upstream: Upstream | None = None
        remote = name
        if ns:
            upstream = self._for_ns(ns.lower())
            if upstream is None:
                raise NAME_INVALID(
                    f"this registry mirrors no registry named {ns!r} (?ns=); it mirrors: "
                    f"{', '.join(self._names()) or 'none'}",
                    detail={"ns": ns},
                )
        else:
            first, _, rest = name.partition("/")
            candidate = self.by_prefix.get(first)
            if candidate is not None and rest:
                return ProxyRoute(candidate, rest, name, self._ttl(candidate))
            upstream = self.default
        if upstream is None:
            return None
        local = upstream.prefix + remote
        if len(local) > 255 or not is_valid_name(local):
            raise NAME_INVALID(f"{local!r} is too long to keep as a repository name")
        return ProxyRoute(upstream, remote, local, self._ttl(upstream))

    def _for_ns(self, ns: str) -> Upstream | None:
        """The upstream ``?ns=`` names. With ``remoteurl`` alone, every ``ns`` is it (as
        in Distribution, which has one upstream and ignores ``ns``); with ``upstreams``,
        the one of that host, else ``remoteurl`` if it is that host."""
        upstream = self.by_host.get(ns)
        if upstream is not None or self.default is None:
            return upstream
        netloc = self.default.netloc.lower()
        if not self.by_host or ns == netloc or (
                ns == "docker.io" and netloc in _DOCKER_HUB_HOSTS):
            return self.default
        return None

    def _names(self) -> list[str]:
        names = sorted(self.by_host)
        if self.default is not None:
            names.append(self.default.netloc)
        return names

    def _ttl(self, upstream: Upstream) -> float:
        return self.ttl if upstream.ttl is None else upstream.ttl

    # --- upstream clients ------------------------------------------------------------
    def _client(self, upstream: Upstream) -> RegistryClient:
        netloc = upstream.netloc
        if time.monotonic() < self._down_until.get(netloc, 0.0):
            raise _UpstreamFailed(UNAVAILABLE(
                f"upstream {upstream.remoteurl} was unreachable moments ago; "
                "it is tried again in a few seconds", status=502,
            ))
        client = self._clients.get(upstream)
        if client is None:
            client = self._clients[upstream] = upstream_client(upstream)
        return client

    async def _ask(self, upstream: Upstream, what: str,
                   call: Callable[[RegistryClient], Awaitable[T]]) -> T:
        """``call(client)``; failures become :class:`_UpstreamFailed` (404s stay
        RegistryErrors: the upstream answered)."""
        client = self._client(upstream)
        self._busy[client] = self._busy.get(client, 0) + 1
        try:
            return await call(client)
        except RegistryError as exc:
            if exc.status == 404:
                raise
            if isinstance(exc, AuthError) and upstream.username is None:
                raise _UpstreamFailed(UNAVAILABLE(no_credentials(upstream, what), status=502)) from exc
            raise _UpstreamFailed(UNAVAILABLE(
                f"upstream {upstream.remoteurl} refused {what}: {exc}", status=502
            )) from exc
        except (ClientError, OSError, TimeoutError, InvalidDigest,
                UnsupportedDigestAlgorithm) as exc:  # the last two: a bad digest header
            if isinstance(exc, Unreachable):
                self._down_until[upstream.netloc] = time.monotonic() + _DOWN_SECONDS
                # The client remembers a host as down for good: the next request after
                # the pause gets a new one; this one is closed once nothing uses it.
                if self._clients.get(upstream) is client:
                    del self._clients[upstream]
                    self._retired.add(client)
            raise _UpstreamFailed(UNAVAILABLE(
                f"upstream {upstream.remoteurl}: {what} failed: {exc}", status=502
            )) from exc
        finally:
            self._busy[client] -= 1
            if not self._busy[client]:
                del self._busy[client]
                if client in self._retired:
                    self._retired.discard(client)
                    await client.close()

    async def close(self) -> None:
        for task in list(self._flights.values()):
            task.cancel()
        for task in list(self._flights.values()):
            with contextlib.suppress(BaseException):
                await task
        for client in [*self._clients.values(), *self._retired]:
            await client.close()
        self._clients.clear()
        self._retired.clear()

    # --- single flight ---------------------------------------------------------------
    def _start(self, key: tuple[str, ...], make: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """The task running ``make()`` for ``key``: the one under way, else a new one."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._flights[key] = task
            self._since[key] = time.monotonic()

            def done(t: asyncio.Task[Any]) -> None:
                if self._flights.get(key) is t:
                    del self._flights[key]
                    self._since.pop(key, None)
                if not t.cancelled():
                    t.exception()  # retrieved: waiters that went away do not leave it unread

            task.add_done_callback(done)
        return task

    async def _once(self, key: tuple[str, ...], make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` once for everyone who asks for ``key`` while it runs; a waiter
        that goes away does not cancel it for the others."""
        return await asyncio.shield(self._start(key, make))

    # --- manifests -------------------------------------------------------------------
    async def ensure_manifest(self, reg: Registry, route: ProxyRoute, reference: str) -> None:
        """Make ``reference`` servable from ``route.local`` (see the module docstring)."""
        ref = parse_reference(reference)
        if ref.digest is not None:
            if reg.cache.get(route.local, str(ref.digest)) is not None:
                return
            if await reg.meta.get_manifest(route.local, str(ref.digest)) is not None:
                return
            await self._once(("m", route.local, str(ref.digest)),
                             lambda: self._fetch_manifest(reg, route, ref.digest, None))
            return
        assert ref.tag is not None
        tag = ref.tag
        seen = self._checked.get((route.local, tag))
        fresh = seen is not None and time.time() - seen[1] < route.ttl
        if fresh and seen is not None and reg.cache.tag(route.local, tag) == seen[0]:
            return
        key = ("t", route.local, tag)
        task = self._start(key, lambda: self._refresh_tag(reg, route, tag))
        if seen is None and await reg.meta.resolve_tag(route.local, tag) is None:
            await asyncio.shield(task)  # nothing cached: the client waits for the upstream
            return
        # Cached: an upstream that does not answer (hung, or unreachable without a
        # refusal) delays the pull by at most _STALE_AFTER from the check's start; the
        # check goes on, and moves the tag when it ends.
        left = self._since.get(key, 0.0) + _STALE_AFTER - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=max(left, 0.0))
        except TimeoutError:
            log.warning("serving cached %s:%s: upstream %s has not answered for %.0f s",
                        route.local, tag, route.upstream.remoteurl, _STALE_AFTER)

    async def _refresh_tag(self, reg: Registry, route: ProxyRoute, tag: str) -> None:
        generation = reg.cache.sync()  # before asking: see manifest_cache.py
        local = await reg.meta.resolve_tag(route.local, tag)
        fetched = await reg.meta.proxy_tag(route.local, tag)
        pushed_here = local is not None and (fetched is None or fetched[0] != local)
        if pushed_here and self.mixed:
            return  # the local tag wins
        if (local is not None and fetched is not None and fetched[0] == local
                and time.time() - fetched[1] < route.ttl):
            if len(self._checked) >= _MAX_CHECKED:
                self._checked.clear()
            self._checked[(route.local, tag)] = fetched
            reg.cache.set_tag(route.local, tag, local, generation)
            return
        ref = ImageRef(route.upstream.netloc, route.remote, tag=tag)
        try:
            upstream_digest = await self._ask(
                route.upstream, f"HEAD of {route.remote}:{tag}", lambda c: c.head_manifest(ref)
            )
            if upstream_digest is None or str(upstream_digest) != local:
                await self._fetch_manifest(reg, route, None, tag)
            else:
                await self._mark(reg, route.local, tag, local)
        except (RegistryError, _UpstreamFailed) as exc:
            # Not cached: the client learns what went wrong upstream (_fetch_manifest has
            # made an upstream 404 a MANIFEST_UNKNOWN). Cached: it gets what is cached.
            if local is None:
                if isinstance(exc, _UpstreamFailed):
                    raise exc.error from exc
                raise
            log.warning("serving cached %s:%s: %s", route.local, tag, exc)

    async def _mark(self, reg: Registry, repo: str, tag: str, digest: str) -> None:
        now = time.time()
        await reg.meta.set_proxy_tag(repo, tag, digest, now)
        if len(self._checked) >= _MAX_CHECKED:
            self._checked.clear()
        self._checked[(repo, tag)] = (digest, now)

    async def _fetch_manifest(self, reg: Registry, route: ProxyRoute,
                              digest: Digest | None, tag: str | None) -> None:
        ref = ImageRef(route.upstream.netloc, route.remote, tag=tag, digest=digest)
        try:
            body, media_type, actual = await self._ask(
                route.upstream, f"GET of {route.remote}:{ref.reference}",
                lambda c: c.get_manifest(ref),
            )
        except RegistryError as exc:
            raise MANIFEST_UNKNOWN(
                f"manifest {ref.reference!r} is not in upstream {route.upstream.remoteurl} "
                f"repository {route.remote!r}",
                detail={"name": route.remote, "reference": ref.reference},
            ) from exc
        except _UpstreamFailed as exc:
            raise exc.error from exc
        if digest is not None and actual != digest:
            raise UNAVAILABLE(f"upstream sent a manifest for {digest} that hashes to "
                              f"{actual}; nothing was kept", status=502)
        try:
            media_type, obj = await asyncio.to_thread(parse_manifest, body, media_type)
        except InvalidObject as exc:
            raise UNAVAILABLE(
                f"upstream {route.upstream.remoteurl} sent a manifest this registry cannot "
                f"keep: {exc}", status=502,
            ) from exc
        await reg.store.put(body, expected=actual, algorithm=actual.algorithm,
                            link=holder(route.local))
        subject = obj.subject
        record = ManifestRecord(
            repo=route.local, digest=str(actual), media_type=media_type, size=len(body),
            subject=str(subject.digest) if subject is not None else None,
            artifact_type=obj.effective_artifact_type(), annotations=obj.annotations,
        )
        await reg.meta.put_manifest(record, (tag,) if tag is not None else ())
        reg.cache.put(route.local, CachedManifest(str(actual), media_type, body, f'"{actual}"'))
        if tag is not None:
            await self._mark(reg, route.local, tag, str(actual))

    async def upstream_tags(self, route: ProxyRoute) -> list[str]:
        """Every tag of ``route.remote`` upstream; a RegistryError when it cannot say."""
        try:
            return await self._ask(route.upstream, f"tag list of {route.remote}",
                                   lambda c: c.tags(route.upstream.netloc, route.remote))
        except _UpstreamFailed as exc:
            raise exc.error from exc

    # --- blobs -----------------------------------------------------------------------
    async def blob_flight(
        self, reg: Registry, route: ProxyRoute, digest: Digest
    ) -> tuple[asyncio.Task[None], BlobFlight] | None:
        """None when ``route.local`` holds the blob now, else the transfer bringing it. Checks
        that a flight's end overtook (they saw no blob) run again: no second upstream GET."""
        key = ("b", route.local, str(digest))
        checking = self._checking.setdefault(key, [0, 0])
        checking[0] += 1
        try:
            while True:
                ended = checking[1]
                if await held_locally(reg.store, holder(route.local), digest):
                    return None
                flight, task = self._blob_flights.get(key), self._flights.get(key)
                if task is not None and flight is not None:
                    return task, flight
                if checking[1] == ended:
                    break  # no flight ended while the store was asked: its answer stands
        finally:
            checking[0] -= 1
            if not checking[0]:
                del self._checking[key]
        new = BlobFlight(getattr(reg.store, "root", None))
        task = self._start(key, lambda: self._fetch_blob(reg, route, digest, new))
        self._blob_flights[key] = new

        def forget(t: asyncio.Task[Any]) -> None:
            if self._blob_flights.get(key) is new:
                del self._blob_flights[key]
            if key in self._checking:  # requests asking the store meanwhile look again
                self._checking[key][1] += 1

        task.add_done_callback(forget)
        return task, new

    async def _fetch_blob(
        self, reg: Registry, route: ProxyRoute, digest: Digest, flight: BlobFlight
    ) -> None:
        upstream = route.upstream

        async def fetch(client: RegistryClient) -> None:
            await receive_blob(client, reg.store, upstream.netloc, route.remote, digest,
                               flight, holder(route.local))

        ok = False
        try:
            await self._ask(upstream, f"GET of blob {digest} in {route.remote}", fetch)
            ok = True
        except RegistryError as exc:
            raise BLOB_UNKNOWN(
                f"blob {digest} is not in upstream {upstream.remoteurl} repository "
                f"{route.remote!r}", detail={"digest": str(digest)},
            ) from exc
        except _UpstreamFailed as exc:
            raise exc.error from exc
        except (DigestMismatch, SizeMismatch, SourceFailed) as exc:
            raise UNAVAILABLE(
                f"blob {digest} from upstream {upstream.remoteurl} was not kept: {exc}",
                status=502,
            ) from exc
        finally:
            flight.finish(ok)


PROXY = web.AppKey("proxy", Proxy)


def proxy_context(config: ServerConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` that runs the pull-through cache when ``proxy`` is configured."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        if not (config.proxy_remoteurl or config.proxy_upstreams):
            yield
            return
        proxy = Proxy(config)
        app[PROXY] = proxy
        try:
            yield
        finally:
            await proxy.close()

    return run


def refuse_write(request: web.Request) -> None:
    """Pushes and deletes on a pull-through cache: 405 UNSUPPORTED unless it is mixed."""
    proxy = request.app.get(PROXY)
    if proxy is not None and not proxy.mixed and request.method in _WRITE_METHODS:
        raise UNSUPPORTED(
            "this registry is a pull-through cache: pushes and deletes are refused "
            "(set proxy.mixed: true to accept them)"
        )


async def get_manifest(request: web.Request, name: str, reference: str) -> web.StreamResponse:
    proxy = request.app.get(PROXY)
    route = proxy.route(request, name) if proxy is not None else None
    if proxy is None or route is None or parse_pull_reference(reference) is None:
        return await manifests.get_manifest(request, name, reference)  # (a bad tag: 404)
    reg = request.app[REGISTRY]
    await proxy.ensure_manifest(reg, route, reference)
    return await manifests.get_manifest(request, route.local, reference,
                                        lambda child: proxy.ensure_manifest(reg, route, child))


async def get_blob(request: web.Request, name: str, digest: str) -> web.StreamResponse:
    proxy = request.app.get(PROXY)
    route = proxy.route(request, name) if proxy is not None else None
    if proxy is None or route is None:
        return await blobs.get_blob(request, name, digest)
    d = parse_digest(digest)
    transfer = await proxy.blob_flight(request.app[REGISTRY], route, d)
    if transfer is not None:
        task, flight = transfer
        if streamable(request):
            await flight.started.wait()
            if flight.join():
                return await stream_flight(request, flight, d)
        await asyncio.shield(task)  # the verified store; raises what the transfer met
    return await blobs.get_blob(request, route.local, digest)
