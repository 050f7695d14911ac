"""pybuild's registry extension: blob recipes, and the spec's extension discovery.

Following the distribution-spec extension rules (``extensions/README.md``: a
``_<extension>/<component>/<module>`` path, parameters in the query)::

    GET /v2/_oci/ext/discover                           registry-level extensions
    GET /v2/<name>/_oci/ext/discover                    repository-level extensions
    GET /v2/<name>/_pybuild/blob/recipe?digest=<d>      the blob's recipe
    ... /v2/<name>/_pybuild/blob/uploads/               piece-level pushes (piece_uploads)

The recipe is how the blob is cut into content-addressed pieces, so a client that already
holds some pieces fetches only the missing byte ranges (with ``Range`` on the ordinary
blob URL) and verifies the reassembled blob against its digest::

    {"digest": "sha256:...", "size": 1234,
     "pieces": [{"offset": 0, "length": 512, "key": "<blake3 hex of those bytes>"}, ...]}

Only blobs readable in ``<name>`` have a recipe there (BLOB_UNKNOWN otherwise), and it is
``<name>``'s: the cut of its own push when the store keeps the blob cut otherwise
(:mod:`registry.server.recipes`: never a sign that the blob existed elsewhere). On a
pull-through cache the name is routed as a blob GET's is (:mod:`registry.server.proxy`):
the recipe is of the copy kept for the upstream, fetched first when it is not yet here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from ..errors import DIGEST_INVALID
from ..names import parse_digest
from .blobs import stat_in_repo
from .piece_uploads import supported
from .proxy import PROXY
from .recipes import recipe_in
from .state import REGISTRY

__all__ = ["RECIPE_MEDIA_TYPE", "blob_recipe", "discover", "discover_repository"]

RECIPE_MEDIA_TYPE = "application/vnd.pybuild.recipe.v1+json"

_OCI = {
    "name": "_oci",
    "description": "extension discovery",
    "url": "https://github.com/opencontainers/distribution-spec/blob/main/extensions/_oci.md",
    "endpoints": ["_oci/ext/discover"],
}
_PYBUILD = {
    "name": "_pybuild",
    "description": "blob recipes (piece offsets, lengths and BLAKE3 keys) for incremental pulls",
    # Where pybuild's documentation describes the extension (relative to the project).
    "url": "docs/piece-index.md",
    "endpoints": ["_pybuild/blob/recipe"],
}
_PYBUILD_PUSH = {
    **_PYBUILD,
    "description": "blob recipes for incremental pulls, piece-level uploads for incremental pushes",
    "endpoints": ["_pybuild/blob/recipe", "_pybuild/blob/uploads"],
}


def _extensions(*items: dict[str, Any]) -> dict[str, Any]:
    return {"extensions": list(items)}


async def discover(request: web.Request) -> web.Response:
    return web.json_response(_extensions(_OCI))


async def discover_repository(request: web.Request, name: str) -> web.Response:
    pybuild = _PYBUILD_PUSH if supported(request) else _PYBUILD
    return web.json_response(_extensions(_OCI, pybuild))


async def blob_recipe(request: web.Request, name: str) -> web.Response:
    reg = request.app[REGISTRY]
    text = request.query.get("digest")
    if not text:
        raise DIGEST_INVALID("the recipe endpoint needs ?digest=<blob digest>")
    digest = parse_digest(text)
    proxy = request.app.get(PROXY)
    route = proxy.route(request, name) if proxy is not None else None
    if proxy is not None and route is not None:
        # A mirror's recipe is of the blob it keeps (under the local name, ``?ns=`` or
        # host-prefixed): fetched from upstream first, as a GET would, so the client then
        # takes only the pieces it lacks from here.
        transfer = await proxy.blob_flight(reg, route, digest)
        if transfer is not None:
            await asyncio.shield(transfer[0])
        name = route.local
    size = await stat_in_repo(reg, name, digest)
    pieces = await recipe_in(reg, name, digest)
    body = {
        "digest": str(digest),
        "size": size,
        "pieces": [{"offset": at, "length": n, "key": key} for key, at, n in pieces],
    }
    return web.json_response(
        body,
        content_type=RECIPE_MEDIA_TYPE,
        headers={"Docker-Content-Digest": str(digest)},
    )
