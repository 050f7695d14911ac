"""What the registry does after each request for its operators: metrics, notification
events and the audit log (:func:`after_request`, called by the middleware), and the
notifier's start and stop (:func:`notifications_lifecycle`, an aiohttp ``cleanup_ctx``).

Events are built here from what the request and the response already carry (the route and
its parameters, ``Docker-Content-Digest``, ``Content-Type``, ``Content-Length``), so the
resource handlers need not know that notifications exist.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from cas import Digest

from .audit import AUDITED_METHODS, audit
from .notifications import BLOB_MEDIA_TYPE, Notifier
from .state import BYTES_RECEIVED, DELETED_TAGS, PARAMS, REGISTRY, ROUTE, USER, Registry

__all__ = ["after_request", "notifications_lifecycle", "request_events"]

log = logging.getLogger("pybuild.registry")


def _is_digest(reference: str) -> bool:
    return ":" in reference


def _request_info(request: web.Request) -> dict[str, Any]:
    peer = request.transport.get_extra_info("peername") if request.transport is not None else None
    addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else (request.remote or "")
    return {
        "id": request.headers.get("X-Request-Id") or str(uuid.uuid4()),
        "addr": addr,
        "host": request.host,
        "method": request.method,
        "useragent": request.headers.get("User-Agent", ""),
    }


def _url(request: web.Request, name: str, kind: str, digest: str) -> str:
    return f"{request.scheme}://{request.host}/v2/{name}/{kind}/{digest}"


def request_events(
    request: web.Request, resp: web.StreamResponse, status: int
) -> list[dict[str, Any]]:
    """Distribution's events for a successful request (see notifications.py for which);
    a blob push's size is left for the notifier to fill in (``_size_of``)."""
    route = request.get(ROUTE)
    method = request.method
    if route is None or not 200 <= status < 300 or method == "HEAD":
        return []
    params = request.get(PARAMS) or {}
    name = params.get("name", "")
    headers = resp.headers
    user = request.get(USER)
    events: list[dict[str, Any]] = []

    def event(action: str, target: dict[str, Any], size_of: str | None = None) -> None:
        target["repository"] = name
        e: dict[str, Any] = {
            "action": action,
            "target": target,
            "request": _request_info(request),
            "actor": {"name": user} if user else {},  # Distribution omits an anonymous name
        }
        if size_of is not None:
            e["_size_of"] = size_of
        events.append(e)

    if route == "manifest":
        reference = params.get("reference", "")
        if method == "GET":
            digest = headers.get("Docker-Content-Digest", "")
            size = resp.content_length or 0
            target = {"mediaType": headers.get("Content-Type", ""), "size": size, "digest": digest,
                      "length": size, "url": _url(request, name, "manifests", digest)}
            if not _is_digest(reference):
                target["tag"] = reference
            event("pull", target)
        elif method == "PUT":
            digest = headers.get("Docker-Content-Digest", "")
            size = request.get(BYTES_RECEIVED, 0)
            tags = ([] if _is_digest(reference) else [reference]) + request.query.getall("tag", [])
            for tag in tags or [None]:
                target = {"mediaType": request.headers.get("Content-Type", ""), "size": size,
                          "digest": digest, "length": size,
                          "url": _url(request, name, "manifests", digest)}
                if tag is not None:
                    target["tag"] = tag
                event("push", target)
        elif method == "DELETE":
            if _is_digest(reference):
                event("delete", {"digest": reference})
                # As Distribution: one more event for each tag that went with the manifest.
                for tag in request.get(DELETED_TAGS) or []:
                    event("delete", {"tag": tag})
            else:
                event("delete", {"tag": reference})
    elif route == "blob":
        digest = params.get("digest", "")
        if method == "GET" and status == 200:
            size = resp.content_length or 0
            event("pull", {"mediaType": BLOB_MEDIA_TYPE, "size": size, "digest": digest, "length": size,
                           "url": _url(request, name, "blobs", digest)})
        elif method == "DELETE":
            event("delete", {"digest": digest})
    elif (route == "upload" and method == "PUT") or (route == "upload-start" and status == 201):
        digest = headers.get("Docker-Content-Digest", "")
        target = {"mediaType": BLOB_MEDIA_TYPE, "size": 0, "digest": digest, "length": 0,
                  "url": _url(request, name, "blobs", digest)}
        if route == "upload-start" and "mount" in request.query:
            target["fromRepository"] = request.query.get("from", "")
            event("mount", target, size_of=digest)
        else:
            event("push", target, size_of=digest)
    return events


def after_request(
    reg: Registry,
    request: web.Request,
    resp: web.StreamResponse | None,
    status: int,
    seconds: float,
    sent: int,
) -> None:
    """Count the request, queue its events, write its audit line. Never raises: the
    response is already decided."""
    try:
        reg.metrics.observe(
            request.method, request.get(ROUTE), status, seconds, request.get(BYTES_RECEIVED, 0), sent
        )
        if reg.notifier is not None and resp is not None:
            for event in request_events(request, resp, status):
                reg.notifier.publish(event)
        # Only writes are audited (audit.py): a read skips even the call.
        if request.method in AUDITED_METHODS and reg.config.log_audit:
            audit(request, status, resp)
    except Exception:
        log.exception("%s %s: recording metrics, events or audit failed", request.method, request.path)


async def notifications_lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Start the notifier (``events.db`` beside ``registry.db``) when endpoints are
    configured; stop it at shutdown, after the requests in flight."""
    reg = app[REGISTRY]
    config = reg.config
    if not any(not e.disabled for e in config.notifications_endpoints) or reg.root is None:
        yield
        return
    notifier = Notifier(
        config.notifications_endpoints, reg.root / "events.db", config.notifications_queue_size,
        reg.metrics, config.host_port[1],
    )

    async def size_of(digest: str) -> int | None:
        info = await reg.store.stat(Digest.parse(digest))
        return None if info is None else int(info.size)

    notifier.stat = size_of
    await notifier.open()
    reg.notifier = notifier
    try:
        yield
    finally:
        reg.notifier = None
        await notifier.close()
