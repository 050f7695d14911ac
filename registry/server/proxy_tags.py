"""Tag lists of a pull-through cache: ``GET /v2/<name>/tags/list`` of a repository that an
upstream serves (routed as :mod:`registry.server.proxy` routes manifests) lists the
upstream's tags, as Distribution's proxy does, so that ``skopeo list-tags`` through a
mirror sees what can be pulled, cached or not. A mixed registry adds the tags pushed to
it. When the upstream cannot answer (down, refusing, or not holding the repository) the
tags the mirror holds are listed. ``n`` and ``last`` page the list here, in the same
ASCIIbetical order as local tags (spec end-8a, end-8b).
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..errors import RegistryError
from . import tags
from .httputil import MAX_PAGE, next_link, parse_page
from .proxy import PROXY
from .state import REGISTRY

__all__ = ["list_tags"]

log = logging.getLogger("pybuild.registry.proxy")


async def list_tags(request: web.Request, name: str) -> web.StreamResponse:
    proxy = request.app.get(PROXY)
    route = proxy.route(request, name) if proxy is not None else None
    if proxy is None or route is None:
        return await tags.list_tags(request, name)
    n, last = parse_page(request)
    try:
        listed = set(await proxy.upstream_tags(route))
    except RegistryError as exc:
        log.warning("listing the cached tags of %s: %s", route.local, exc)
        return await tags.list_tags(request, route.local)
    meta = request.app[REGISTRY].meta
    if proxy.mixed and await meta.repository_exists(route.local):
        batch = await meta.tags(route.local, None, MAX_PAGE)
        while batch:
            listed.update(batch)
            batch = await meta.tags(route.local, batch[-1], MAX_PAGE) if len(batch) == MAX_PAGE else []
    names = sorted(t for t in listed if last is None or t > last)
    headers = {}
    if n is not None:
        limit = min(n, MAX_PAGE)
        if len(names) > limit:
            names = names[:limit]
            if names:
                headers["Link"] = next_link(f"/v2/{name}/tags/list", limit, names[-1])
    return web.json_response({"name": name, "tags": names}, headers=headers)
