"""Referrers: ``GET /v2/<name>/referrers/<digest>[?artifactType=<type>]`` (spec end-12).

Always 200 with an OCI image index listing the manifests of ``<name>`` whose ``subject`` is
``<digest>`` (empty if none, even for an unknown subject). Each descriptor carries the
manifest's ``artifactType`` (for an image manifest without one, its config media type)
and its annotations. An ``artifactType`` filter is applied here and announced with
``OCI-Filters-Applied: artifactType``; a ``+`` in it is read as itself, escaped or not: a
media type never holds a space but often a ``+`` (``application/spdx+json``), which form
decoding would turn into a space when a client (curl) leaves it unescaped.

A long list comes in pages, as the spec asks when "the descriptor list cannot be returned
in a single manifest": each page is an index of at most ``MAX_MANIFEST_BYTES`` (what a
client reads as one manifest), with a ``Link: <...?last=<digest>>; rel="next"`` header
when more follow (the filter, if any, carried along). The referrers are read a batch at a
time (their order first, then the rows that fit), so neither memory nor a page grows
with their number. A page that starts after a referrer deleted meanwhile is empty.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from ..names import parse_digest
from ..oci import OCI_INDEX
from .manifests import MAX_MANIFEST_BYTES
from .state import REGISTRY

__all__ = ["list_referrers"]

# Referrers read at a time: at most this many, and no more than their manifests' sizes
# (which bound their annotations) add up to.
_BATCH = 4096
_BATCH_BYTES = MAX_MANIFEST_BYTES
_ENVELOPE = 128  # the index around the descriptors, with room to spare


async def list_referrers(request: web.Request, name: str, digest: str) -> web.Response:
    reg = request.app[REGISTRY]
    subject = parse_digest(digest)
    wanted = _artifact_type(request)
    cursor = request.query.get("last")
    if cursor is not None:
        cursor = str(parse_digest(cursor))
    entries: list[bytes] = []
    size = _ENVELOPE
    more = False
    while not more:
        batch = await reg.meta.referrers(name, str(subject), cursor, _BATCH, _BATCH_BYTES)
        for r in batch:
            if wanted is not None and r.artifact_type != wanted:
                cursor = r.digest
                continue
            d: dict[str, Any] = {"mediaType": r.media_type, "digest": r.digest, "size": r.size}
            if r.artifact_type:
                d["artifactType"] = r.artifact_type
            if r.annotations:
                d["annotations"] = r.annotations
            entry = json.dumps(d).encode()
            if entries and size + len(entry) + 2 > MAX_MANIFEST_BYTES:
                more = True  # this one opens the next page
                break
            entries.append(entry)
            size += len(entry) + 2
            cursor = r.digest
        if not batch:
            break
    body = b'{"schemaVersion": 2, "mediaType": "%s", "manifests": [%s]}' % (
        OCI_INDEX.encode(), b", ".join(entries))
    headers = {"Content-Type": OCI_INDEX}
    if wanted is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    if more and cursor is not None:
        query = f"last={quote(cursor, safe='')}"
        if wanted is not None:
            query += f"&artifactType={quote(wanted, safe='')}"
        headers["Link"] = f'</v2/{name}/referrers/{subject}?{query}>; rel="next"'
    return web.Response(body=body, headers=headers)


def _artifact_type(request: web.Request) -> str | None:
    """The first ``artifactType`` query parameter, percent-decoded but with ``+`` kept."""
    for pair in request.rel_url.raw_query_string.split("&"):
        key, _, value = pair.partition("=")
        if unquote(key) == "artifactType":
            return unquote(value)
    return None
