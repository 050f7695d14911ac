"""Typed application state: the store, the metadata database, caches, live uploads.

Everything a handler needs hangs off one :class:`Registry` object stored under
:data:`REGISTRY` (a ``web.AppKey``), so handlers are plain functions of the request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
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
from .metadata import Metadata
from .metrics import Metrics
from .notifications import Notifier

__all__ = [
    "BYTES_RECEIVED",
    "BYTES_SENT",
    "GRANT",
    "DELETED_TAGS",
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
    async def is_linked(self, holder: str, digest: Digest) -> bool: ...
    async def holders(self, digest: Digest) -> list[str]: ...
    async def stats(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class CachedManifest:
    """A manifest ready to serve: its exact bytes and the headers that describe it."""

    digest: str
    media_type: str
    body: bytes
    etag: str
    headers: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Built once per cached manifest rather than once per GET.
        self.headers.update(
            {
                "Content-Type": self.media_type,
                "Docker-Content-Digest": self.digest,
                "ETag": self.etag,
                "Docker-Distribution-API-Version": "registry/2.0",
            }
        )


class ManifestCache:
    """LRU of hot manifests and tag resolutions, bounded by total manifest bytes.

    Entries are only ever inserted from the metadata database's state after a write has
    committed, and invalidated by the write paths of this process (the only writer).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bytes = 0
        self._manifests: OrderedDict[tuple[str, str], CachedManifest] = OrderedDict()
        self._tags: dict[tuple[str, str], str] = {}

    def get(self, repo: str, digest: str) -> CachedManifest | None:
        entry = self._manifests.get((repo, digest))
        if entry is not None:
            self._manifests.move_to_end((repo, digest))
        return entry

    def put(self, repo: str, entry: CachedManifest) -> None:
        if len(entry.body) > self.max_bytes:
            return
        old = self._manifests.pop((repo, entry.digest), None)
        if old is not None:
            self._bytes -= len(old.body)
        self._manifests[(repo, entry.digest)] = entry
        self._bytes += len(entry.body)
        while self._bytes > self.max_bytes:
            _, evicted = self._manifests.popitem(last=False)
            self._bytes -= len(evicted.body)

    def drop(self, repo: str, digest: str) -> None:
        old = self._manifests.pop((repo, digest), None)
        if old is not None:
            self._bytes -= len(old.body)
        for key in [k for k, v in self._tags.items() if k[0] == repo and v == digest]:
            del self._tags[key]

    def tag(self, repo: str, tag: str) -> str | None:
        return self._tags.get((repo, tag))

    def set_tag(self, repo: str, tag: str, digest: str) -> None:
        if len(self._tags) > 100_000:
            self._tags.clear()
        self._tags[(repo, tag)] = digest

    def drop_tag(self, repo: str, tag: str) -> None:
        self._tags.pop((repo, tag), None)


@dataclass
class Registry:
    """The running registry: configuration, storage, metadata and per-process caches."""

    config: ServerConfig
    store: BlobStore
    meta: Metadata
    metrics: Metrics = field(default_factory=lambda: Metrics())
    auth: Authorizer | None = None  # None: no authentication
    cache: ManifestCache = field(default_factory=lambda: ManifestCache(64 * 1024 * 1024))
    root: Path | None = None  # the storage directory (registry.db, robots.json)
    # Open ingests by upload id (resumed from cas on a miss, e.g. after a restart).
    ingests: dict[str, Any] = field(default_factory=dict)
    upload_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
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
    # Operations (operations.py): the storage directory, webhooks (None: no endpoints).
    root: Path | None = None
    notifier: Notifier | None = None

    def __post_init__(self) -> None:
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

    async def drain(self, timeout: float) -> bool:
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

    def upload_lock(self, upload_id: str) -> asyncio.Lock:
        lock = self.upload_locks.get(upload_id)
        if lock is None:
            lock = self.upload_locks[upload_id] = asyncio.Lock()
        return lock

    def forget_upload(self, upload_id: str) -> None:
        self.ingests.pop(upload_id, None)
        self.upload_locks.pop(upload_id, None)
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
