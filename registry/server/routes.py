"""The URL table of the Distribution API and the dispatcher that applies it.

Repository names contain slashes, so every ``/v2/<name>/...`` path goes through one
catch-all aiohttp route and is matched here against the *raw* request path, after
:func:`registry.names.check_raw_path` has refused percent-escapes and dot segments.

    path                                         methods             handler
    /v2/<name>/blobs/uploads/                    POST                uploads.start_upload
    /v2/<name>/blobs/uploads/<uuid>              GET PATCH PUT DELETE uploads.*
    /v2/<name>/blobs/<digest>                    GET HEAD DELETE     blobs.*
    /v2/<name>/manifests/<reference>             GET HEAD PUT DELETE manifests.*
    /v2/<name>/tags/list                         GET                 tags.list_tags
    /v2/<name>/referrers/<digest>                GET                 referrers.list_referrers
    /v2/<name>/_oci/ext/discover                 GET                 extensions.discover_repository
    /v2/<name>/_pybuild/blob/recipe              GET                 extensions.blob_recipe

A path that matches no row but has a bad name is NAME_INVALID; a known path with a wrong
method is UNSUPPORTED (405); anything else is a 404.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..errors import NAME_INVALID, UNSUPPORTED
from ..names import MAX_NAME_LENGTH, NAME_PATTERN, check_raw_path
from . import blobs, extensions, manifests, referrers, tags, uploads
from .state import ROUTE

__all__ = ["ROUTES", "Route", "WRITE_METHODS", "dispatch"]

Handler = Callable[..., Awaitable[web.StreamResponse]]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    pattern: re.Pattern[str]
    handlers: dict[str, Handler]


def _route(name: str, tail: str, handlers: dict[str, Handler]) -> Route:
    return Route(name, re.compile(rf"^/v2/(?P<name>{NAME_PATTERN})/{tail}$"), handlers)


_UUID = r"(?P<upload_id>[A-Za-z0-9_=-]{1,128})"
_REF = r"(?P<reference>[A-Za-z0-9_.:=+-]{1,200})"
_DIGEST = r"(?P<digest>[A-Za-z0-9_.:=+-]{1,200})"

ROUTES: tuple[Route, ...] = (
    _route("upload-start", r"blobs/uploads/?", {"POST": uploads.start_upload}),
    _route(
        "upload",
        rf"blobs/uploads/{_UUID}",
        {
            "GET": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
    ),
    _route(
        "blob",
        rf"blobs/{_DIGEST}",
        {"GET": blobs.get_blob, "HEAD": blobs.get_blob, "DELETE": blobs.delete_blob},
    ),
    _route(
        "manifest",
        rf"manifests/{_REF}",
        {
            "GET": manifests.get_manifest,
            "HEAD": manifests.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
    ),
    _route("tags", r"tags/list", {"GET": tags.list_tags}),
    _route("referrers", rf"referrers/{_DIGEST}", {"GET": referrers.list_referrers}),
    _route("discover", r"_oci/ext/discover", {"GET": extensions.discover_repository}),
    _route("recipe", r"_pybuild/blob/recipe", {"GET": extensions.blob_recipe}),
)

# The name is everything before the last recognised resource segment.
_NAME_PART = re.compile(
    r"^/v2/(?P<name>.+?)/(?:blobs|manifests|tags|referrers|_oci|_pybuild)(?:/|$)"
)


def match(method: str, path: str) -> tuple[Route, Handler, dict[str, Any]]:
    """Find the handler for ``method path``; raise the spec's error if there is none."""
    for route in ROUTES:
        m = route.pattern.match(path)
        if m is None:
            continue
        handler = route.handlers.get(method)
        if handler is None:
            raise UNSUPPORTED(
                f"{method} is not supported on {path}; allowed: {', '.join(route.handlers)}",
                headers={"Allow": ", ".join(route.handlers)},
            )
        return route, handler, m.groupdict()
    m = _NAME_PART.match(path)
    if m is not None:
        name = m.group("name")
        if len(name) > MAX_NAME_LENGTH or not re.fullmatch(NAME_PATTERN, name):
            raise NAME_INVALID(
                f"invalid repository name {name!r}: use lowercase path components of "
                "[a-z0-9] joined by '.', '_', '__' or '-', separated by single '/'",
                detail={"name": name},
            )
    raise UNSUPPORTED(f"no registry endpoint at {path}", status=404)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """The catch-all ``/v2/{tail}`` handler."""
    raw = request.raw_path
    check_raw_path(raw)
    path = raw.split("?", 1)[0]
    route, handler, params = match(request.method, path)
    if len(params["name"]) > MAX_NAME_LENGTH:
        raise NAME_INVALID(f"repository name is longer than {MAX_NAME_LENGTH} characters")
    request[ROUTE] = route.name
    return await handler(request, **params)
