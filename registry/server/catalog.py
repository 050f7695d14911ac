"""Repository listing: ``GET /v2/_catalog[?n=<int>&last=<name>]`` (CNCF Distribution's
``_catalog`` extension, reserved by the spec). Paging works like tag listing."""

from __future__ import annotations

from aiohttp import web

from .httputil import MAX_PAGE, next_link, parse_page
from .state import REGISTRY

__all__ = ["catalog"]


async def catalog(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY]
    n, last = parse_page(request)
    limit = MAX_PAGE if n is None else min(n, MAX_PAGE)
    names = await reg.meta.repositories(last, limit + 1) if limit > 0 else []
    headers = {}
    if len(names) > limit:
        names = names[:limit]
        headers["Link"] = next_link("/v2/_catalog", limit, names[-1])
    return web.json_response({"repositories": names}, headers=headers)
