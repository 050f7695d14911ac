"""Tag listing: ``GET /v2/<name>/tags/list[?n=<int>&last=<tag>]`` (spec end-8a, end-8b).

Tags come back in ASCIIbetical order (SQLite's BINARY collation). With ``n``, at most
``n`` tags and a ``Link: <...>; rel="next"`` header when more follow; ``n=0`` is an empty
list without ``Link``. An unknown repository is NAME_UNKNOWN (404).
"""

from __future__ import annotations

from aiohttp import web

from ..errors import NAME_UNKNOWN
from .httputil import MAX_PAGE, next_link, parse_page
from .state import REGISTRY

__all__ = ["list_tags"]


async def list_tags(request: web.Request, name: str) -> web.Response:
    reg = request.app[REGISTRY]
    n, last = parse_page(request)
    if not await reg.meta.repository_exists(name):
        raise NAME_UNKNOWN(f"repository {name!r} is not known to this registry", detail={"name": name})
    limit = MAX_PAGE if n is None else min(n, MAX_PAGE)
    tags = await reg.meta.tags(name, last, limit + 1) if limit > 0 else []
    headers = {}
    if len(tags) > limit:
        tags = tags[:limit]
        headers["Link"] = next_link(f"/v2/{name}/tags/list", limit, tags[-1])
    return web.json_response({"name": name, "tags": tags}, headers=headers)
