"""Typed application state: the store, the metadata, caches, live uploads.

Everything a handler needs hangs off one :class:`Registry` object stored under
:data:`REGISTRY` (a ``web.AppKey``), so handlers are plain functions of the request.

Several processes may serve one store and one metadata database. What a ``Registry``
shares with them: the store and the metadata (each a backend behind a protocol:
:class:`BlobStore`, :class:`~registry.server.metadata.Metadata`). What it keeps for
itself, and how that stays correct:

- ``cache`` (:class:`~registry.server.manifest_cache.ManifestCache`) follows the
  metadata's generation token, so a write through any process is seen at once;
- ``upload_locks`` (:class:`~registry.server.upload_locks.UploadLocks`) is shared
  through the database when it is PostgreSQL (in-process on SQLite), and a session kept
  open in ``ingests`` is checked against its checkpoint before use, so any replica may
  serve any request of a session;
- ``piece_keys`` holds the piece keys of recent bases of piece-level pushes: a blob's
  recipe never changes while its digest names it, so nothing needs to follow;
- ``manifest_pushed`` holds when manifests count as pushed, as last read or renewed
  (:mod:`~registry.server.renewals`): that time only moves forward while the manifest is
  there, and one deleted anywhere is no longer found by ``cache``, so an old value only
  makes a renewal come sooner;
- limits, metrics and the drain state are per process by design.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from cas import Digest
from cas.holders import HolderKind, parse_holder, repository_holder

from .access import Grant, PullFilter
from .auth import Authorizer
from .config import ServerConfig
from .limits import LimitLog, UploadLimits, UploadSlots
from .manifest_cache import CachedManifest, ManifestCache
from .metadata import RegistryMetadata
from .metrics import Metrics
from .notifications import Notifier
from .pull_log import PullLog
from .upload_locks import InProcessUploadLocks, UploadLocks

__all__ = [
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "DELETED_TAGS",
    "GRANT",
    "PARAMS",
    "REGISTRY",
    "ROUTE",
    "USER",
    "VISIBLE",
    "BlobStore",
    "CachedManifest",
    "ManifestCache",
    "Registry",
    "holder",
]


# A repository's holder under its older name here; new code uses
# cas.holders.repository_holder.
holder = repository_holder


class BlobStore(Protocol):
    """The part of ``cas.Store`` the registry uses (see the cas API contract)."""

    async def put(
        self, data: bytes, *, expected: Digest | None = None, algorithm: str = "sha256",
        link: str | None = None,
    ) -> Any: ...
    async def begin_ingest(self, *, algorithm: str = "sha256") -> Any: ...
    async def resume_ingest(self, ingest_id: str) -> Any: ...
    async def list_ingests(self) -> list[Any]: ...
    async def ingest_info(self, ingest_id: str) -> Any: ...
    async def expire_ingests(self, older_than: float) -> int: ...
    async def stat(self, digest: Digest) -> Any: ...
    async def read_bytes(self, digest: Digest) -> bytes: ...
    def segments(
        self, digest: Digest, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[Any]: ...
    async def recipe(self, digest: Digest) -> Any: ...
    async def link(self, holder: str, digest: Digest) -> None: ...
    async def link_all(self, holder: str, digests: list[Digest]) -> list[Digest]: ...
    async def unlink(self, holder: str, digest: Digest) -> bool: ...
    async def unlink_stale(
        self, holder: str, digests: list[Digest], older_than: float
    ) -> list[Digest]: ...
    async def linked(self, holder: str) -> list[Digest]: ...
    async def gc(self, *, grace: float = 3600.0) -> Any: ...
    async def is_linked(self, holder: str, digest: Digest) -> bool: ...
    async def holders(self, digest: Digest) -> list[str]: ...
    async def stats(self) -> Any: ...


@dataclass
class Registry:
    """The running registry: configuration, storage, metadata (any implementation of the
    protocol) and per-process caches; the module docstring says what is shared."""

    config: ServerConfig
    store: BlobStore
    meta: RegistryMetadata
    metrics: Metrics = field(default_factory=lambda: Metrics())
    auth: Authorizer | None = None  # None: no authentication
    cache: ManifestCache = field(default_factory=lambda: ManifestCache(64 * 1024 * 1024))
    root: Path | None = None  # the storage directory (registry.db, robots.json, events.db)
    # Open ingests by upload id (resumed from cas on a miss, e.g. after a restart).
    ingests: dict[str, Any] = field(default_factory=dict)
    upload_locks: UploadLocks = field(default_factory=InProcessUploadLocks)
    # What clients hold (see limits.py); made from the config in __post_init__.
    limit_log: LimitLog = field(default_factory=LimitLog)
    upload_limits: UploadLimits = field(init=False)
    upload_slots: UploadSlots = field(init=False)
    streaming: int = 0  # upload bodies being streamed into ingests now
    # Heap trimming after ingests give memory back (uploads._release_memory).
    trim_pending: bool = False
    trimmed_at: float = 0.0
    # Graceful shutdown: requests in flight, and whether we are draining them.
    inflight: int = 0
    draining: bool = False
    _idle: asyncio.Event | None = None
    # Operations (operations.py): webhooks (None: no endpoints).
    notifier: Notifier | None = None
    # Manifest pull times for retention (retention.py; None: retention not scheduled).
    pulls: PullLog | None = None
    # Piece keys of the blobs recently named as bases of piece-level pushes, by digest,
    # least recently used first (piece_uploads.base_keys; bounded there).
    piece_keys: OrderedDict[Digest, frozenset[str]] = field(default_factory=OrderedDict)
    # When manifests read by digest by callers granted push count as pushed, by (repo,
    # digest), least recently used first (renewals.renew_manifest; bounded there).
    manifest_pushed: OrderedDict[tuple[str, str], float] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        self.cache.follow(self.meta.generation)
        c = self.config
        self.upload_limits = UploadLimits(
            max_sessions=c.uploads_max_sessions,
            max_sessions_per_client=c.uploads_max_sessions_per_client,
            max_bytes=c.uploads_max_bytes,
            max_bytes_per_client=c.uploads_max_bytes_per_client,
            log=self.limit_log,
        )
        self.upload_slots = UploadSlots(c.uploads_max_active, c.uploads_max_active_per_client)

    def request_started(self) -> None:
        self.inflight += 1

    def request_finished(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a grace period, not a cancel scope
        """Stop keeping connections alive and wait (up to ``timeout`` s) for the requests
        in flight to finish; True if they all did."""
        self.draining = True
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def upload_lock(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        return self.upload_locks.hold(upload_id)

    async def open_session(self, client: str, repository: str,
                           begin: Callable[[], Awaitable[Any]]) -> Any:
        """A new upload session for ``client``: within its limits (``limits.UploadLimits``),
        its ingest from ``begin()`` recorded for ``repository`` in the metadata, and kept
        open here. Nothing of it stays when any step fails."""
        reservation = self.upload_limits.reserve(client)
        try:
            ingest = await begin()
            try:
                await self.meta.add_upload(ingest.id, repository)
            except BaseException:
                await ingest.abort()
                raise
        except BaseException:
            self.upload_limits.remove(reservation)
            raise
        self.ingests[ingest.id] = ingest
        self.upload_limits.claim(reservation, ingest.id)
        return ingest

    def forget_upload(self, upload_id: str) -> None:
        self.ingests.pop(upload_id, None)
        self.upload_locks.forget(upload_id)
        self.upload_limits.remove(upload_id)

    async def readable_holders(
        self, digest: Digest, user: str | None, grant: Grant | None = None
    ) -> Iterable[str]:
        """Repositories holding ``digest`` that ``user`` may read: those ``grant`` (the
        request's bearer token) allows pulling; all without tokens (anonymous when auth is
        off, any authenticated user with basic auth)."""
        names = [h.name for h in map(parse_holder, await self.store.holders(digest))
                 if h is not None and h.kind is HolderKind.REPOSITORY]
        if grant is None:
            return names
        return [n for n in names if grant.may_pull(n)]


REGISTRY = web.AppKey("registry", Registry)
# Per-request facts the middleware reads back after the handler ran.
USER = web.RequestKey("user", str)
ROUTE = web.RequestKey("route", str)
# What the request's bearer token grants (token auth only).
GRANT = web.RequestKey("grant", Grant)
# The catalog lists only what this lets pull (set when this server issues the tokens).
VISIBLE = web.RequestKey("visible", PullFilter)
DELETED_TAGS = web.RequestKey("deleted_tags", list)  # tags a manifest DELETE dropped
PARAMS = web.RequestKey("params", dict)  # the route's parameters: name, reference, digest...
BYTES_SENT = web.RequestKey("bytes_sent", int)
BYTES_RECEIVED = web.RequestKey("bytes_received", int)
