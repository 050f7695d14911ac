"""Tag listing: ``GET /v2/<name>/tags/list[?n=<int>&last=<tag>]`` (spec end-8a, end-8b).

Tags come back in ASCIIbetical order (SQLite's BINARY collation). With ``n``, at most
``n`` tags (and at most ``MAX_PAGE``) and a ``Link: <...>; rel="next"`` header when more
follow; ``n=0`` is an empty list without ``Link``. Without ``n``, every tag (after
``last``), as CNCF Distribution (2.8 and 3) answers: clients that never look for a
``Link`` header see them all; a long list is read and sent in batches. A repository
never tagged (unknown, or holding only blobs or manifests pushed by digest) is
NAME_UNKNOWN (404), as in Distribution; one whose tags were all deleted lists none.
"""

from __future__ import annotations

import json

from aiohttp import web

from ..errors import NAME_UNKNOWN
from .httputil import MAX_PAGE, next_link, parse_page
from .state import REGISTRY

__all__ = ["list_tags"]

_BATCH = 10 * MAX_PAGE  # tags read and encoded at a time when all are asked for


async def list_tags(request: web.Request, name: str) -> web.StreamResponse:
    reg = request.app[REGISTRY]
    n, last = parse_page(request)
    if not await reg.meta.repository_tagged(name):
        raise NAME_UNKNOWN(f"repository {name!r} is not known to this registry or has never been tagged",
                           detail={"name": name})
    if n is None:
        return await _all_tags(request, name, last)
    limit = min(n, MAX_PAGE)
    tags = await reg.meta.tags(name, last, limit + 1) if limit > 0 else []
    headers = {}
    if len(tags) > limit:
        tags = tags[:limit]
        headers["Link"] = next_link(f"/v2/{name}/tags/list", limit, tags[-1])
    return web.json_response({"name": name, "tags": tags}, headers=headers)


async def _all_tags(request: web.Request, name: str, last: str | None) -> web.StreamResponse:
    meta = request.app[REGISTRY].meta
    batch = await meta.tags(name, last, _BATCH)
    if len(batch) < _BATCH:
        return web.json_response({"name": name, "tags": batch})
    resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8",
                                       "Docker-Distribution-API-Version": "registry/2.0"})
    await resp.prepare(request)
    await resp.write(json.dumps({"name": name})[:-1].encode() + b', "tags": [')
    sep = b""
    while batch:
        await resp.write(sep + json.dumps(batch)[1:-1].encode())
        sep = b", "
        batch = await meta.tags(name, batch[-1], _BATCH) if len(batch) == _BATCH else []
    await resp.write(b"]}")
    await resp.write_eof()
    return resp
