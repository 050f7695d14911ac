"""Repository listing: ``GET /v2/_catalog[?n=<int>&last=<name>]`` (CNCF Distribution's
``_catalog`` extension, reserved by the spec). Paging works like tag listing.

When this registry issues its own tokens, a caller sees only the repositories it may pull
(the request's ``VISIBLE`` filter)."""

from __future__ import annotations

from aiohttp import web

from .access import PullFilter
from .httputil import MAX_PAGE, next_link, parse_page
from .state import REGISTRY, VISIBLE, Registry

_SCAN = 1000  # repository names read per query while filtering

__all__ = ["catalog"]


async def catalog(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY]
    n, last = parse_page(request)
    limit = MAX_PAGE if n is None else min(n, MAX_PAGE)
    visible = request.get(VISIBLE)
    if limit <= 0:
        names = []
    elif visible is None:
        names = await reg.meta.repositories(last, limit + 1)
    else:
        names = await _visible(reg, visible, last, limit + 1)
    headers = {}
    if len(names) > limit:
        names = names[:limit]
        headers["Link"] = next_link("/v2/_catalog", limit, names[-1])
    return web.json_response({"repositories": names}, headers=headers)


async def _visible(reg: Registry, visible: PullFilter, last: str | None, wanted: int) -> list[str]:
    """Up to ``wanted`` names after ``last`` that ``visible`` lets pull; every query moves
    past the names it read, so the scan ends at the last repository."""
    out: list[str] = []
    while len(out) < wanted:
        batch = await reg.meta.repositories(last, _SCAN)
        out.extend(n for n in batch if visible.may_pull(n))
        if len(batch) < _SCAN:
            break
        last = batch[-1]
    return out[:wanted]
