"""The audit log: one JSON line for every write that changes what a repository holds.

    {"event":"audit","ts":"2026-01-01T00:00:00.123456Z","action":"push",
     "repository":"lib/app","reference":"latest","digest":"sha256:...","tags":["latest"],
     "user":"alice","remote":"127.0.0.1","agent":"docker/28.2.2",
     "method":"PUT","path":"/v2/lib/app/manifests/latest","status":201,"outcome":"success"}

Audited, whatever the outcome (a refused or failed attempt is logged with its status and
``"outcome":"failure"``, a 401 with ``"user":null``):

    action   request
    push     PUT manifests/<tag|digest> (``tags``: the tags it sets), PUT blobs/uploads/<id>
             (a blob upload's commit), POST blobs/uploads/?digest= (monolithic upload)
    mount    POST blobs/uploads/?mount=<digest>[&from=<repo>] (``from``; a 202 means the
             blob was not mountable and an upload session started instead)
    delete   DELETE manifests/<tag|digest> (``tags``: the tags a digest's delete dropped),
             DELETE blobs/<digest>

Lines go to the ``pybuild.registry.audit`` logger; ``pybuild serve`` writes them bare (no
log prefix) to stderr, beside the access log. ``log.audit: false`` turns them off.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from aiohttp import web

from ..errors import RegistryError
from .notifications import timestamp
from .state import DELETED_TAGS, PARAMS, ROUTE, USER

__all__ = ["AUDITED_METHODS", "AUDIT_LOGGER", "audit_record", "install_audit_handler"]

AUDIT_LOGGER = "pybuild.registry.audit"
log = logging.getLogger(AUDIT_LOGGER)
# Only these change what a repository holds; a request with another method is never audited.
AUDITED_METHODS = frozenset({"PUT", "POST", "DELETE"})


def _route(request: web.Request) -> tuple[str | None, dict[str, str]]:
    """The route and its parameters; worked out here when the request never reached the
    dispatcher (refused by authentication or read-only mode)."""
    route = request.get(ROUTE)
    if route is not None:
        return route, request.get(PARAMS) or {}
    from .routes import match  # routes imports the handlers; only needed for refusals

    try:
        found, _, params = match(request.method, request.raw_path.split("?", 1)[0])
    except RegistryError:
        return None, {}
    return found.name, params


def _action(method: str, route: str | None, query: Any) -> str | None:
    if method == "PUT" and route in ("manifest", "upload"):
        return "push"
    if method == "DELETE" and route in ("manifest", "blob"):
        return "delete"
    if method == "POST" and route == "upload-start":
        if "mount" in query:
            return "mount"
        if "digest" in query:
            return "push"
    return None


def audit_record(request: web.Request, status: int, resp: web.StreamResponse | None) -> dict[str, Any] | None:
    """The audit line's fields for ``request`` answered with ``status``; None when the
    request is not an audited write."""
    if request.method not in AUDITED_METHODS or not request.raw_path.startswith("/v2/"):
        return None
    route, params = _route(request)
    query = request.query
    action = _action(request.method, route, query)
    if action is None:
        return None
    record: dict[str, Any] = {"event": "audit", "ts": timestamp(), "action": action,
                              "repository": params.get("name")}
    reference = params.get("reference") or params.get("digest") or query.get("mount") or query.get("digest")
    record["reference"] = reference
    digest = resp.headers.get("Docker-Content-Digest") if resp is not None and status < 300 else None
    if digest is None and reference is not None and ":" in reference:
        digest = reference
    record["digest"] = digest
    if route == "manifest" and action == "push":
        tags = [] if reference is None or ":" in reference else [reference]
        record["tags"] = tags + query.getall("tag", [])
    if action == "mount":
        record["from"] = query.get("from")
    if route == "manifest" and action == "delete" and request.get(DELETED_TAGS):
        record["tags"] = request.get(DELETED_TAGS)
    record.update(
        user=request.get(USER),
        remote=request.remote,
        agent=request.headers.get("User-Agent"),
        method=request.method,
        path=request.raw_path,
        status=status,
        outcome="success" if 200 <= status < 300 else "failure",
    )
    return record


def audit(request: web.Request, status: int, resp: web.StreamResponse | None) -> None:
    """Log the audit line for ``request`` if it is an audited write."""
    if not log.isEnabledFor(logging.INFO):
        return
    record = audit_record(request, status, resp)
    if record is not None:
        log.info("%s", json.dumps(record, separators=(",", ":")))


def install_audit_handler(stream: TextIO | None = None) -> None:
    """Write audit lines bare (one JSON object per line) to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
