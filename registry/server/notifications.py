"""Webhook notifications in CNCF Distribution's format (its docs/notifications.md).

Every successful push, pull, mount and delete becomes an *event*; each configured
endpoint gets it POSTed as an envelope of media type :data:`EVENTS_MEDIA_TYPE`::

    {"events": [{"id": "...", "timestamp": "2026-01-01T00:00:00.000000Z",
                 "action": "push",
                 "target": {"mediaType": "...", "size": 737, "digest": "sha256:...",
                            "length": 737, "repository": "lib/app",
                            "url": "http://host/v2/lib/app/manifests/sha256:...",
                            "tag": "latest"},
                 "request": {"id": "...", "addr": "127.0.0.1:53211", "host": "host:5000",
                             "method": "PUT", "useragent": "docker/28.2.2"},
                 "actor": {"name": "alice"},   (``{}`` when anonymous)
                 "source": {"addr": "hostname:5000", "instanceID": "..."}}]}

Delivery never slows a request: the middleware hands the event to :meth:`Notifier.publish`
(a bounded in-memory append); a writer task persists it in ``events.db`` (SQLite, next
to ``registry.db``, written from one thread; processes sharing the storage directory each
send the events they wrote: :mod:`.notifications_queue`) and one sender task per endpoint
POSTs the endpoint's events in order, one per envelope. A response in 200-399 is success; anything
else (or a timeout) is retried: after ``threshold`` consecutive failures the sender waits
``backoff``, doubling up to 60 s, and keeps trying. Events wait in ``events.db`` across
restarts, so an endpoint that is down loses none; delivery is at least once (an event whose
POST was cut by a shutdown is sent again). Each endpoint keeps at most
``notifications.queue_size`` undelivered events; beyond that new events are dropped for it,
with a ``{"event":"notifications_dropped",...}`` log line at most once a second.

Which requests make events (only successful ones; a HEAD makes none, nor does a ranged
blob GET, which the parallel clients send by the dozen for one blob):

    manifest GET            pull    (tag when fetched by tag)
    manifest PUT            push    (one per tag: the reference and each ``?tag=``)
    manifest DELETE         delete  (by digest: target.digest, then one per tag it dropped;
                                     by tag: target.tag)
    blob GET (200)          pull
    blob upload commit      push    (``PUT`` of a session, or monolithic ``POST ?digest=``)
    blob mount (201)        mount   (target.fromRepository)
    blob DELETE             delete
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import time
import uuid
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from cas.errors import storage_error

from ..client.proxies import Proxies, ProxyError, aiohttp_proxy
from .notifications_queue import EventQueue

__all__ = [
    "ACTIONS",
    "EVENTS_MEDIA_TYPE",
    "Endpoint",
    "Notifier",
    "parse_duration",
    "parse_endpoints",
]

log = logging.getLogger("pybuild.registry")

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
BLOB_MEDIA_TYPE = "application/octet-stream"
ACTIONS = ("push", "pull", "mount", "delete")
MAX_BACKOFF = 60.0
CLOSE_TIMEOUT = 5.0  # seconds the writer gets at shutdown to write what is in memory
DB_RETRY = 1.0  # seconds between attempts to write events.db once it failed
DB_LOG_EVERY = 60.0  # seconds between log lines about an events.db that still fails
ADOPT_EVERY = 10.0  # seconds between looks for events a stopped process left

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any, key: str) -> float:
    """Go's duration syntax (``500ms``, ``1m30s``) or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a duration such as 500ms or 2s, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{key} must be a duration such as 500ms or 2s, got {value!r}")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds < 0 or seconds != seconds or seconds > 86400:
        raise ValueError(f"{key} must be between 0 and 24h, got {value!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ``notifications.endpoints`` entry (Distribution's keys and meanings)."""

    name: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = 1.0
    threshold: int = 10
    backoff: float = 1.0
    ignored_media_types: frozenset[str] = field(default_factory=frozenset)
    ignored_actions: frozenset[str] = field(default_factory=frozenset)
    disabled: bool = False

    def wants(self, event: Mapping[str, Any]) -> bool:
        """False for an event of an ignored action or target media type."""
        if event["action"] in self.ignored_actions:
            return False
        return event["target"].get("mediaType") not in self.ignored_media_types


_ENDPOINT_KEYS = {
    "name", "url", "headers", "timeout", "threshold", "backoff", "ignoredmediatypes", "ignore", "disabled",
}


def _strings(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of strings, got {value!r}")
    return list(value)


def _endpoint(doc: Any, where: str) -> Endpoint:
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where} must be a mapping with name and url, got {doc!r}")
    unknown = sorted(set(map(str, doc)) - _ENDPOINT_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_ENDPOINT_KEYS))}")
    name, url = doc.get("name"), doc.get("url")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name is required (a non-empty string)")
    where = f"endpoint {name!r}"
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: url must be an http:// or https:// URL, got {url!r}")
    headers: list[tuple[str, str]] = []
    raw = doc.get("headers") or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: headers must map names to lists of values, got {raw!r}")
    for key, values in raw.items():
        for v in [values] if isinstance(values, str) else _strings(values, f"{where}: headers.{key}"):
            if "\n" in v or "\r" in v or "\n" in str(key) or "\r" in str(key):
                raise ValueError(f"{where}: header {key!r} must be one line")
            headers.append((str(key), v))
    threshold = doc.get("threshold", 10)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"{where}: threshold must be a whole number >= 0, got {threshold!r}")
    ignore = doc.get("ignore") or {}
    if not isinstance(ignore, Mapping) or set(ignore) - {"mediatypes", "actions"}:
        raise ValueError(f"{where}: ignore takes mediatypes and actions lists, got {ignore!r}")
    actions = _strings(ignore.get("actions"), f"{where}: ignore.actions")
    bad = sorted(set(actions) - set(ACTIONS))
    if bad:
        raise ValueError(f"{where}: ignore.actions: unknown action(s) {', '.join(bad)}; known: {', '.join(ACTIONS)}")
    disabled = doc.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ValueError(f"{where}: disabled must be true or false, got {disabled!r}")
    return Endpoint(
        name=name,
        url=str(url),
        headers=tuple(headers),
        # Zero is the default, as Distribution reads it (a backoff of 0 would retry a
        # failing endpoint in a busy loop).
        timeout=parse_duration(doc.get("timeout", 1.0), f"{where}: timeout") or 1.0,
        threshold=threshold or 10,
        backoff=parse_duration(doc.get("backoff", 1.0), f"{where}: backoff") or 1.0,
        ignored_media_types=frozenset(
            _strings(doc.get("ignoredmediatypes"), f"{where}: ignoredmediatypes")
            + _strings(ignore.get("mediatypes"), f"{where}: ignore.mediatypes")
        ),
        ignored_actions=frozenset(actions),
        disabled=disabled,
    )


def parse_endpoints(value: Any) -> tuple[Endpoint, ...]:
    """``notifications.endpoints`` (a list of mappings, or its YAML/JSON text) -> endpoints;
    ValueError naming the entry and key at fault."""
    if isinstance(value, tuple) and all(isinstance(e, Endpoint) for e in value):
        return value
    if isinstance(value, str):
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"notifications.endpoints is not valid YAML/JSON: {exc}") from exc
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"notifications.endpoints must be a list of endpoints, got {value!r}")
    endpoints = tuple(_endpoint(doc, f"notifications.endpoints[{i}]") for i, doc in enumerate(value))
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"notifications.endpoints: names must be unique, got {names}")
    return endpoints


def timestamp(now: float | None = None) -> str:
    """RFC 3339 in UTC with microseconds, as Go's time.Time marshals (to its precision)."""
    now = time.time() if now is None else now
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class Notifier:
    """Queues events for the configured endpoints and delivers them in the background.

    ``publish`` is synchronous and O(1): it is called by the request middleware. Start
    with :meth:`open`, stop with :meth:`close` (events not yet written are written first).
    """

    def __init__(
        self, endpoints: tuple[Endpoint, ...], path: Path, queue_size: int, metrics: Any, port: int
    ) -> None:
        self.endpoints = tuple(e for e in endpoints if not e.disabled)
        self.path = path
        self.queue_size = queue_size
        self.metrics = metrics
        self.instance_id = str(uuid.uuid4())
        self.source_addr = f"{socket.gethostname()}:{port}"
        self.pending: dict[str, int] = {e.name: 0 for e in self.endpoints}
        self.sent: dict[str, int] = {e.name: 0 for e in self.endpoints}
        self._incoming: deque[dict[str, Any]] = deque()
        self._wake_writer = asyncio.Event()
        self._wake: dict[str, asyncio.Event] = {e.name: asyncio.Event() for e in self.endpoints}
        self._dropped: dict[str, int] = {}
        self._dropped_logged = 0.0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-db")
        self._queue: EventQueue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._proxies = Proxies()  # HTTP_PROXY and NO_PROXY, as the client reads them
        self._closing = False
        self._db_failing_logged: float | None = None  # when the last "cannot write" line was

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def open(self) -> None:
        self._queue = await self._db(EventQueue, self.path, self.instance_id)
        try:
            await self._db(self._queue.adopt)  # left by a process that stopped
        except Exception as exc:  # a full disk: the adopter tries again
            log.warning("notifications: cannot take over the events left in %s yet (%s)",
                        self.path, storage_error(exc, self.path) or exc)
        counts = await self._db(self._queue.counts)
        for name, n in counts.items():
            if name in self.pending:
                self.pending[name] = n
                self.metrics.notifications_pending.labels(name).set(n)
            else:
                log.warning("events.db holds %d event(s) for endpoint %r, which is not configured", n, name)
        self._session = aiohttp.ClientSession()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._writer()))
        for endpoint in self.endpoints:
            self._tasks.append(loop.create_task(self._sender(endpoint)))
        self._tasks.append(loop.create_task(self._adopter()))
        if any(self.pending.values()):
            log.info("notifications: %d event(s) from before the restart to send", sum(self.pending.values()))

    async def close(self) -> None:
        """Stop sending; write what is still in memory (the writer finishes its round, so
        an insert cut off by a cancellation is not repeated), within a few seconds."""
        writer, senders = self._tasks[:1], self._tasks[1:]
        for task in senders:
            task.cancel()
        self._closing = True
        self._wake_writer.set()
        for task in writer:
            try:
                await asyncio.wait_for(asyncio.shield(task), CLOSE_TIMEOUT)
            except TimeoutError:
                log.error("notifications: %d event(s) could not be written to %s at shutdown",
                          len(self._incoming), self.path)
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
        if self._queue is not None:
            await self._db(self._queue.close)
        self._thread.shutdown(wait=False)

    # -- producing --------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (Distribution's event object, without id/timestamp/source)."""
        if not self.endpoints:
            return
        if len(self._incoming) >= self.queue_size:
            for endpoint in self.endpoints:
                self._drop(endpoint.name)
            return
        event["id"] = str(uuid.uuid4())
        event["timestamp"] = timestamp()
        self._incoming.append(event)
        self._wake_writer.set()

    def _drop(self, name: str) -> None:
        self._dropped[name] = self._dropped.get(name, 0) + 1
        self.metrics.notifications.labels(name, "dropped").inc()
        now = time.monotonic()
        if now - self._dropped_logged >= 1.0:
            self._dropped_logged = now
            for endpoint, n in sorted(self._dropped.items()):
                log.warning("%s", json.dumps({
                    "event": "notifications_dropped", "endpoint": endpoint, "dropped": n,
                    "queue_size": self.queue_size,
                    "reason": "the endpoint's queue is full (is it down?); raise notifications.queue_size to keep more",
                }, separators=(",", ":")))
            self._dropped.clear()

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            try:
                await self._persist()
            except Exception as exc:
                await self._db_failed(exc)
                self._wake_writer.set()
                continue
            self._db_works()
            if self._closing and not self._incoming:
                return

    async def _persist(self) -> None:
        if not self._incoming or self._queue is None:
            return
        events = list(self._incoming)
        rows: list[tuple[str, str]] = []
        added: dict[str, int] = {}
        for event in events:
            fill = event.pop("_size_of", None)
            if fill is not None:
                info = await self._stat(fill)
                if info is not None:
                    event["target"]["size"] = event["target"]["length"] = info
            event["source"] = {"addr": self.source_addr, "instanceID": self.instance_id}
            body: str | None = None
            for endpoint in self.endpoints:
                if not endpoint.wants(event):
                    continue
                if self.pending[endpoint.name] + added.get(endpoint.name, 0) >= self.queue_size:
                    self._drop(endpoint.name)
                    continue
                if body is None:
                    body = json.dumps({"events": [event]}, separators=(",", ":"))
                rows.append((endpoint.name, body))
                added[endpoint.name] = added.get(endpoint.name, 0) + 1
        await self._db(self._queue.add, rows)
        for _ in events:
            self._incoming.popleft()
        for name, n in added.items():
            self.pending[name] += n
            self.metrics.notifications_pending.labels(name).set(self.pending[name])
            self._wake[name].set()

    async def _db_failed(self, exc: Exception) -> None:
        """Log that events.db cannot be used (once, then at most once a minute: a full
        disk would otherwise log a traceback a second) and wait before the next try."""
        now = time.monotonic()
        if self._db_failing_logged is None or now - self._db_failing_logged >= DB_LOG_EVERY:
            self._db_failing_logged = now
            mapped = storage_error(exc, self.path)
            log.error("notifications: cannot use %s (%s); %d new event(s) wait in memory, retrying every %.0f s",
                      self.path, mapped or exc, len(self._incoming), DB_RETRY, exc_info=mapped is None and exc)
        await asyncio.sleep(DB_RETRY)

    def _db_works(self) -> None:
        if self._db_failing_logged is not None:
            self._db_failing_logged = None
            log.warning("notifications: %s can be written again", self.path)

    async def _adopter(self) -> None:
        """Now and then, take over the events of another process on this storage
        directory that stopped (killed) before sending them."""
        assert self._queue is not None
        while True:
            await asyncio.sleep(ADOPT_EVERY)
            try:
                if not await self._db(self._queue.adopt):
                    continue
                counts = await self._db(self._queue.counts)
            except Exception as exc:
                await self._db_failed(exc)
                continue
            for name in self.pending:
                self.pending[name] = counts.get(name, 0)
                self.metrics.notifications_pending.labels(name).set(self.pending[name])
                self._wake[name].set()

    stat: Any = None  # async (digest text) -> size or None; set by the application

    async def _stat(self, digest: str) -> int | None:
        if self.stat is None:
            return None
        try:
            return int(await self.stat(digest))
        except Exception:  # an event without a size is better than none
            return None

    # -- delivering -------------------------------------------------------------------

    async def _sender(self, endpoint: Endpoint) -> None:
        assert self._queue is not None and self._session is not None
        failures = 0
        wake = self._wake[endpoint.name]
        headers = {"Content-Type": EVENTS_MEDIA_TYPE}
        headers.update(endpoint.headers)
        while True:
            wake.clear()  # before the read: an insert after it sets it again
            try:
                head = await self._db(self._queue.head, endpoint.name)
            except Exception as exc:
                await self._db_failed(exc)
                continue
            if head is None:
                await wake.wait()
                continue
            seq, body = head
            error = await self._post(endpoint, headers, body)
            if error is None:
                # Delivered: retry forgetting it (a full disk refuses even a DELETE) rather
                # than let this sender die, or POST the event again.
                while True:
                    try:
                        await self._db(self._queue.remove, seq)
                        break
                    except Exception as exc:
                        await self._db_failed(exc)
                self._db_works()
                failures = 0
                self.pending[endpoint.name] = max(self.pending[endpoint.name] - 1, 0)
                self.sent[endpoint.name] += 1
                self.metrics.notifications.labels(endpoint.name, "sent").inc()
                self.metrics.notifications_pending.labels(endpoint.name).set(self.pending[endpoint.name])
                continue
            failures += 1
            self.metrics.notifications.labels(endpoint.name, "failed").inc()
            if failures == 1 or failures == endpoint.threshold:
                log.warning("notifications: endpoint %r failed (%s); %d event(s) wait, retrying",
                            endpoint.name, error, self.pending[endpoint.name])
            if failures < endpoint.threshold:
                await asyncio.sleep(0.05)
            else:
                doublings = min(failures - endpoint.threshold, 16)
                await asyncio.sleep(min(endpoint.backoff * (2**doublings), MAX_BACKOFF))

    async def _post(self, endpoint: Endpoint, headers: dict[str, str], body: str) -> str | None:
        """POST one envelope; None on success, else what went wrong."""
        assert self._session is not None
        try:
            via = aiohttp_proxy(self._proxies, endpoint.url)
        except ProxyError as exc:
            return str(exc)
        try:
            async with self._session.post(
                endpoint.url, data=body.encode(), headers=headers,
                timeout=aiohttp.ClientTimeout(total=endpoint.timeout), allow_redirects=False,
                **via,
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 400:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
