"""The URL table of the Distribution API and the dispatcher that applies it.

Repository names contain slashes, so every ``/v2/...`` path goes through one catch-all
aiohttp route and is matched here against the *raw* request path, after
:func:`registry.names.check_raw_path` (in the middleware) has refused percent-escapes and dot segments. A
route is the fixed tail of the path (``*`` marks a parameter); everything before the tail
is the repository name::

    tail                            methods               handler
    blobs/uploads/  (or no slash)   POST                  uploads.start_upload
    blobs/uploads/*                 GET HEAD PATCH PUT    uploads.*   (upload_id)
                                    DELETE
    blobs/*                         GET HEAD DELETE       blobs.*     (digest)
    manifests/*                     GET HEAD PUT DELETE   manifests.* (reference)
    tags/list                       GET                   tags.list_tags
    referrers/*                     GET                   referrers.list_referrers (digest)
    _oci/ext/discover               GET                   extensions.discover_repository
    _pybuild/blob/recipe            GET                   extensions.blob_recipe
    _pybuild/blob/uploads/          POST                  piece_uploads.start_piece_upload
    _pybuild/blob/uploads/*         POST PATCH PUT GET DELETE  piece_uploads.* (upload_id)

GET and HEAD of blobs and manifests go through :mod:`proxy` (the pull-through cache,
when ``proxy`` is configured: it fetches what is missing, then the handlers above serve
it), and tag lists through :mod:`proxy_tags` (the upstream's tags); on a pull-through
cache, writes are refused there too.

Registry-level paths (``/v2/``, ``/v2/_catalog``, ``/v2/_oci/ext/discover``) are matched
first. A path matching no row is 404; a known path with another method is UNSUPPORTED
(405), except ``OPTIONS``: 200 with ``Allow`` (CORS preflights); a bad repository name is
NAME_INVALID (400).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ..errors import BLOB_UPLOAD_UNKNOWN, NAME_INVALID, UNSUPPORTED
from ..names import is_valid_name
from . import (
    blobs,
    catalog,
    extensions,
    manifests,
    piece_uploads,
    proxy,
    proxy_tags,
    referrers,
    uploads,
)
from .state import PARAMS, ROUTE

__all__ = ["ROUTES", "WRITE_METHODS", "Route", "dispatch", "match"]

Handler = Callable[..., Awaitable[web.StreamResponse]]
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_UPLOAD_ID = re.compile(r"^[A-Za-z0-9_=-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Route:
    """``tail``: the path's last components, ``*`` for the parameter named ``param``."""

    name: str
    tail: tuple[str, ...]
    handlers: dict[str, Handler]
    param: str | None = None


async def _base(request: web.Request) -> web.Response:
    return web.json_response({})


REGISTRY_ROUTES: dict[str, Route] = {
    "": Route("base", (), {"GET": _base, "HEAD": _base}),
    "_catalog": Route("catalog", ("_catalog",), {"GET": catalog.catalog}),
    "_oci/ext/discover": Route("discover", ("_oci", "ext", "discover"), {"GET": extensions.discover}),
}

ROUTES: tuple[Route, ...] = (
    Route("upload-start", ("blobs", "uploads", ""), {"POST": uploads.start_upload}),
    Route("upload-start", ("blobs", "uploads"), {"POST": uploads.start_upload}),
    Route(
        "upload",
        ("blobs", "uploads", "*"),
        {
            "GET": uploads.upload_status,
            "HEAD": uploads.upload_status,
            "PATCH": uploads.patch_upload,
            "PUT": uploads.finish_upload,
            "DELETE": uploads.cancel_upload,
        },
        "upload_id",
    ),
    Route(
        "blob",
        ("blobs", "*"),
        {"GET": proxy.get_blob, "HEAD": proxy.get_blob, "DELETE": blobs.delete_blob},
        "digest",
    ),
    Route(
        "manifest",
        ("manifests", "*"),
        {
            "GET": proxy.get_manifest,
            "HEAD": proxy.get_manifest,
            "PUT": manifests.put_manifest,
            "DELETE": manifests.delete_manifest,
        },
        "reference",
    ),
    Route("tags", ("tags", "list"), {"GET": proxy_tags.list_tags}),
    Route("referrers", ("referrers", "*"), {"GET": referrers.list_referrers}, "digest"),
    Route("discover", ("_oci", "ext", "discover"), {"GET": extensions.discover_repository}),
    Route("recipe", ("_pybuild", "blob", "recipe"), {"GET": extensions.blob_recipe}),
    Route("piece-upload-start", ("_pybuild", "blob", "uploads", ""),
          {"POST": piece_uploads.start_piece_upload}),
    Route("piece-upload-start", ("_pybuild", "blob", "uploads"),
          {"POST": piece_uploads.start_piece_upload}),
    Route(
        "piece-upload",
        ("_pybuild", "blob", "uploads", "*"),
        {
            "POST": piece_uploads.query_pieces,
            "PATCH": piece_uploads.patch_pieces,
            "PUT": piece_uploads.finish_piece_upload,
            "GET": piece_uploads.piece_upload_status,
            "DELETE": piece_uploads.cancel_piece_upload,
        },
        "upload_id",
    ),
)

# Names seen valid recently: the name regex is the costliest step of a hot GET.
_valid_names: set[str] = set()


def _check_name(name: str) -> None:
    if name in _valid_names:
        return
    if not is_valid_name(name):
        raise NAME_INVALID(
            f"invalid repository name {name!r}: use lowercase path components of "
            "[a-z0-9] joined by '.', '_', '__' or '-', separated by single '/', "
            "at most 255 characters",
            detail={"name": name},
        )
    if len(_valid_names) > 10_000:
        _valid_names.clear()
    _valid_names.add(name)


def _allowed(route: Route, method: str, path: str) -> Handler:
    handler = route.handlers.get(method)
    if handler is None:
        allowed = ", ".join(route.handlers)
        if method == "OPTIONS":
            return _options(allowed)
        raise UNSUPPORTED(
            f"{method} is not supported on {path}; allowed: {allowed}",
            headers={"Allow": allowed},
        )
    return handler


def _options(allowed: str) -> Handler:
    """``OPTIONS`` on a known path: 200 and ``Allow``, as Distribution answers it (gorilla's
    MethodHandler). A browser asks it before a ``DELETE`` or a request with an
    ``Authorization`` or a long ``Accept`` header to another origin (a registry UI, with
    CORS headers in ``http.headers``); a 405 made the browser refuse the request."""

    async def options(request: web.Request, **_params: str) -> web.Response:
        return web.Response(status=200, headers={"Allow": allowed, "Content-Length": "0"})

    return options


# Lookup tables built from ROUTES: fixed tails, and parameter routes by their fixed prefix.
_FIXED: dict[tuple[str, ...], Route] = {r.tail: r for r in ROUTES if "*" not in r.tail}
_PARAM: dict[tuple[str, ...], Route] = {r.tail[:-1]: r for r in ROUTES if r.tail[-1:] == ("*",)}
_LENGTHS = sorted({len(r.tail) for r in ROUTES}, reverse=True)


def match(method: str, path: str) -> tuple[Route, Handler, dict[str, str]]:
    """Find the handler for ``method path`` (a raw ``/v2`` path without query).

    The longest matching tail wins, a fixed tail before a parameter. Returns the route,
    its handler and the keyword arguments for it; raises the spec's error when there is
    none.
    """
    rest = path[4:] if path.startswith("/v2/") else ""
    top = REGISTRY_ROUTES.get(rest)
    if top is not None:
        return top, _allowed(top, method, path), {}
    parts = rest.split("/")
    n = len(parts)
    for k in _LENGTHS:
        if n <= k:
            continue
        tail = tuple(parts[n - k :])
        route = _FIXED.get(tail)
        value = None
        if route is None:
            route = _PARAM.get(tail[:-1])
            value = tail[-1]
            if route is None or not value:
                continue
        name = "/".join(parts[: n - k])
        _check_name(name)
        handler = _allowed(route, method, path)
        params = {"name": name}
        if route.param is not None:
            assert value is not None
            if route.param == "upload_id" and not _UPLOAD_ID.match(value):
                raise BLOB_UPLOAD_UNKNOWN(f"{value!r} is not an upload id")
            params[route.param] = value
        return route, handler, params
    raise UNSUPPORTED(f"no registry endpoint at {path}", status=404)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """The catch-all ``/v2`` handler (the middleware has already run check_raw_path)."""
    raw = request.raw_path
    route, handler, params = match(request.method, raw.split("?", 1)[0])
    request[ROUTE] = route.name
    request[PARAMS] = params
    proxy.refuse_write(request)
    return await handler(request, **params)
