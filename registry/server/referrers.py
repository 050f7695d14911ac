"""Referrers: ``GET /v2/<name>/referrers/<digest>[?artifactType=<type>]`` (spec end-12).

Always 200 with an OCI image index listing the manifests of ``<name>`` whose ``subject`` is
``<digest>`` (empty if none, even for an unknown subject). Each descriptor carries the
manifest's ``artifactType`` (for an image manifest without one, its config media type)
and its annotations. An ``artifactType`` filter is applied here and announced with
``OCI-Filters-Applied: artifactType``; a ``+`` in it is read as itself, escaped or not: a
media type never holds a space but often a ``+`` (``application/spdx+json``), which form
decoding would turn into a space when a client (curl) leaves it unescaped.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from ..names import parse_digest
from ..oci import OCI_INDEX
from .state import REGISTRY

__all__ = ["list_referrers"]


async def list_referrers(request: web.Request, name: str, digest: str) -> web.Response:
    reg = request.app[REGISTRY]
    subject = parse_digest(digest)
    wanted = _artifact_type(request)
    manifests: list[dict[str, Any]] = []
    for r in await reg.meta.referrers(name, str(subject)):
        if wanted is not None and r.artifact_type != wanted:
            continue
        d: dict[str, Any] = {"mediaType": r.media_type, "digest": r.digest, "size": r.size}
        if r.artifact_type:
            d["artifactType"] = r.artifact_type
        if r.annotations:
            d["annotations"] = r.annotations
        manifests.append(d)
    body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    headers = {"Content-Type": OCI_INDEX}
    if wanted is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(body=json.dumps(body).encode(), headers=headers)


def _artifact_type(request: web.Request) -> str | None:
    """The first ``artifactType`` query parameter, percent-decoded but with ``+`` kept."""
    for pair in request.rel_url.raw_query_string.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key) == "artifactType":
            return unquote(value)
    return None
