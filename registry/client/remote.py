"""An OCI Distribution client: :class:`RegistryClient`, the endpoints, on top of the one
request policy for auth, retries and redirects (:class:`registry.client.session.RegistrySession`).

Covers the spec's pull, push and content-discovery endpoints: ``/v2/`` ping, manifests
GET/HEAD/PUT, blobs HEAD/GET (with ``Range``), uploads (POST, PATCH, PUT, status GET,
cross-repository mount), tag lists and referrers, plus pybuild's extension: blob recipes
and piece-level pushes.
The options, errors and scopes (:class:`ClientOptions`, :class:`TransportError`,
:class:`Unreachable`, :func:`pull_scope`, :func:`push_scope`) are
:mod:`registry.client.session`'s, re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from urllib.parse import urljoin

from cas import Digest

from ..errors import RegistryError
from ..oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
    OCI_INDEX,
    OCI_MANIFEST,
    Index,
)
from .connections import WireResponse
from .content_range import WrongRange, check_content_range
from .refs import ImageRef
from .session import (
    ClientOptions,
    RegistrySession,
    TransportError,
    Unreachable,
    pull_scope,
    push_scope,
)
from .transfer import cancel_all

__all__ = [
    "MANIFEST_ACCEPT",
    "ClientOptions",
    "RangeIgnored",
    "RegistryClient",
    "TransportError",
    "Unreachable",
    "WrongRange",
    "pull_scope",
    "push_scope",
]

MANIFEST_ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
RECIPE_ENDPOINT = "_pybuild/blob/recipe"
PIECE_UPLOADS_ENDPOINT = "_pybuild/blob/uploads"
PLAN_MEDIA_TYPE = "application/vnd.pybuild.push-plan.v1+json"
_MAX_MANIFEST = 4 << 20
# Compiled on first use (re caches it): only listings of many pages need it.
_NEXT = r'<([^>]*)>[^,]*;\s*rel="?next"?'
# The largest OCI-Chunk-Min-Length followed (a chunk is held in memory while it is sent).
MAX_CHUNK = 128 << 20
# What a step of a push may be answered with: the spec's 201 (a manifest, a closed
# upload) or 202 (a chunk), and what registries answer instead (200, 204, 202 for a
# manifest), as Docker and containerd take any of them.
_DONE = (200, 201, 202, 204)


# Recipes asked for ahead and not yet taken, at most (prefetch_recipe).
_AHEAD = 16


class RangeIgnored(TransportError):
    """A ranged blob GET answered with the whole blob (200): the registry ignores Range."""


class RegistryClient(RegistrySession):
    """One session for every registry an operation touches. Use as ``async with``."""

    def __init__(self, options: ClientOptions | None = None) -> None:
        super().__init__(options)
        self._endpoints: dict[tuple[str, str], frozenset[str]] = {}
        self._chunk_min: dict[str, int] = {}  # host -> its OCI-Chunk-Min-Length
        #: Hosts that answered a ranged blob GET with the whole blob (whatever their HEAD
        #: said of Accept-Ranges): their blobs are read in one stream.
        self.ranges_ignored: set[str] = set()
        # Recipes asked for ahead (prefetch_recipe), until recipe() takes them.
        self._recipes: dict[tuple[str, str, str], asyncio.Future[list[tuple[int, int, str]]]] = {}

    async def close(self) -> None:
        # Recipes asked for ahead but never taken (their blob failed, or was there):
        # stopped, and their failures retrieved.
        left, self._recipes = list(self._recipes.values()), {}
        await cancel_all(left)
        await super().close()

    # --- API ---------------------------------------------------------------------------
    async def ping(self, host: str) -> None:
        """``GET /v2/`` (authenticating if asked); raises if the host is no registry."""
        try:
            await self._request("GET", host, "/v2/")
        except RegistryError as exc:
            if exc.status in (404, 405):  # a web server, or a registry's path
                raise TransportError(f"{host} is not an OCI registry ({exc}): a registry answers "
                                     "GET /v2/ with 200 or 401; check the host and port") from exc
            raise

    async def get_manifest(self, ref: ImageRef, *, push: bool = False) -> tuple[bytes, str, Digest]:
        """The manifest's exact bytes, media type and digest (verified when pinned).
        ``push``: asked while pushing (the push token, which may also pull, serves)."""
        resp, body = await self._request(
            "GET", ref.api_host, f"/v2/{ref.name}/manifests/{ref.reference}",
            scopes=frozenset({_scope(ref.name, push)}), headers={"Accept": MANIFEST_ACCEPT},
        )
        if len(body) > _MAX_MANIFEST:
            raise TransportError(f"manifest {ref} is {len(body)} bytes, over the 4 MiB limit")
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        try:
            doc = json.loads(body)
            doc_type, version = doc.get("mediaType"), doc.get("schemaVersion")
        except (ValueError, AttributeError, RecursionError):
            doc_type = version = None
        if media_type in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED) or version == 1:
            # Sent though not asked for (a registry holding nothing else for the tag); its
            # digest covers the signed payload, not the bytes, so say what it is instead.
            raise TransportError(
                f"{ref} is a Docker schema 1 manifest ({media_type}), which pybuild does not read "
                f"(nor do CNCF Distribution 3 and containerd 2): convert it to schema 2 with "
                f"docker pull {ref} and docker push (its digest changes), then copy that")
        media_type = doc_type or media_type or OCI_MANIFEST
        expected = ref.digest
        if expected is None and resp.headers.get("Docker-Content-Digest"):
            expected = Digest.parse(resp.headers["Docker-Content-Digest"])
        digest = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise TransportError(
                f"manifest {ref} does not match its digest: expected {expected}, got {digest}"
            )
        return body, media_type, Digest.of(body) if expected is None else digest

    async def explain_missing(self, ref: ImageRef, exc: RegistryError) -> None:
        """Reword the 404 of ``ref``'s manifest as Docker does (``manifest for REF not
        found``) and say what the repository holds: its tags, or that it has none (a
        misspelt repository). One page of tags is asked for, on this failure only."""
        if exc.status != 404:
            return
        try:
            tags: list[str] | None = await self.tags(ref.api_host, ref.name, pages=1)
        except RegistryError as listing:
            tags = [] if listing.status == 404 else None
        except (TransportError, ValueError):
            tags = None
        if tags is None:
            hint = f"check the name and the {'digest' if ref.digest else 'tag'}"
        elif not tags:
            hint = f"the registry has no image in repository {ref.repository}: check its name"
        else:
            shown = ", ".join(tags[:10]) + (" and more" if len(tags) > 10 else "")
            hint = (f"{ref.repository} has the tag{'s' if len(tags) > 1 else ''} {shown}: "
                    f"check the {'digest' if ref.digest else 'tag'}")
        exc.args = (f"manifest for {ref} not found ({exc.args[0]}); {hint}",)

    async def head_manifest(self, ref: ImageRef) -> Digest | None:
        """The digest ``ref`` resolves to, or None if the registry does not have it."""
        try:
            resp, _ = await self._request(
                "HEAD", ref.api_host, f"/v2/{ref.name}/manifests/{ref.reference}",
                scopes=frozenset({pull_scope(ref.name)}), headers={"Accept": MANIFEST_ACCEPT},
            )
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        value = resp.headers.get("Docker-Content-Digest")
        return Digest.parse(value) if value else None

    async def put_manifest(self, ref: ImageRef, body: bytes, media_type: str) -> Digest:
        _resp, _ = await self._request(
            "PUT", ref.api_host, f"/v2/{ref.name}/manifests/{ref.reference}",
            scopes=frozenset({push_scope(ref.name)}), headers={"Content-Type": media_type},
            data=body, ok=_DONE,
        )
        return Digest.of(body)

    async def head_blob(self, host: str, name: str, digest: Digest, *, push: bool = False) -> tuple[int, bool] | None:
        """``(size, accepts_ranges)`` if ``name`` has the blob, else None."""
        scope = push_scope(name) if push else pull_scope(name)
        try:
            resp, _ = await self._request(
                "HEAD", host, f"/v2/{name}/blobs/{digest}", scopes=frozenset({scope}), redirects=True,
            )
        except RegistryError as exc:
            if exc.status == 404:
                return None
            raise
        ranges = resp.headers.get("Accept-Ranges", "").lower() == "bytes"
        return int(resp.headers.get("Content-Length", "-1")), ranges

    @asynccontextmanager
    async def open_blob(
        self, host: str, name: str, digest: Digest, start: int = 0, end: int | None = None,
        *, whole: bool = False, url: str | None = None,
    ) -> AsyncIterator[WireResponse]:
        """A blob GET, from ``start`` to ``end`` (inclusive) when given, following redirects;
        a worker thread reads the body (:meth:`registry.client.connections.WireResponse.readinto`).

        A ranged request that gets a whole-blob 200 instead of 206 raises RangeIgnored
        (the caller then knows the server ignores ranges), unless ``whole``: the 200 is
        then the caller's to read past what it holds. A 206 that is not the range asked
        for raises WrongRange before its body is read (:mod:`.content_range`). ``url``: a
        nondistributable layer's own URL instead (its host gets none of the registry's
        credentials, as for a redirect)."""
        headers = {}
        ranged = start > 0 or end is not None
        if ranged:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        resp = await self._send(
            "GET", host, url or f"/v2/{name}/blobs/{digest}", scopes=frozenset({pull_scope(name)}),
            headers=headers, ok=(200, 206), redirects=True,
        )
        try:
            if ranged and resp.status != 206 and not whole:
                self.ranges_ignored.add(host)
                raise RangeIgnored(f"blob {digest}: the registry ignored Range {headers['Range']}")
            if ranged and resp.status == 206:
                check_content_range(f"blob {digest}", headers["Range"], start, end,
                                    resp.headers.get("Content-Range"), resp.length)
            yield resp
        finally:
            resp.release()

    async def start_upload(
        self, host: str, name: str, *, mount: Digest | None = None, source: str | None = None
    ) -> str | None:
        """POST an upload; with ``mount``/``source`` try a cross-repository mount first.

        Returns the upload URL, or None if the blob was mounted."""
        scopes = {push_scope(name)}
        params = None
        if mount is not None and source is not None:
            scopes.add(pull_scope(source))
            params = {"mount": str(mount), "from": source}
        resp, _ = await self._request(
            "POST", host, f"/v2/{name}/blobs/uploads/", scopes=frozenset(scopes),
            params=params, ok=(200, 201, 202), headers={"Content-Length": "0"},
        )
        if resp.status == 201 and params is not None:
            return None
        least = resp.headers.get("OCI-Chunk-Min-Length", "").strip()
        if least.isdigit():
            self._chunk_min[host] = int(least)
        return self._location(resp, host)

    def upload_chunk(self, host: str, wanted: int) -> int:
        """The PATCH size to use at ``host``: ``wanted``, or the ``OCI-Chunk-Min-Length``
        it asked for when larger (up to ``MAX_CHUNK``, which is held in memory)."""
        return max(wanted, min(self._chunk_min.get(host, 0), MAX_CHUNK))

    def _location(self, resp: WireResponse, host: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise TransportError(f"{host} answered an upload request without a Location")
        return urljoin(str(resp.url), location)

    async def upload_offset(self, host: str, name: str, url: str) -> int:
        """Bytes the upload session at ``url`` holds (spec: GET upload status, ``Range``)."""
        resp, _ = await self._request(
            "GET", host, url, scopes=frozenset({push_scope(name)}), ok=(204, 200)
        )
        value = resp.headers.get("Range", "").removeprefix("bytes=")
        _start, _, end = value.partition("-")
        # "0-0" is what registries report for an empty session too (and Distribution
        # says "0--1"); sessions here never hold a single byte, so both mean 0.
        if not value or end in ("0", "-1") or not end.isdigit():
            return 0
        return int(end) + 1

    async def patch_upload(self, host: str, name: str, url: str, data: bytes, start: int) -> str:
        """Send one chunk at ``start``; returns the URL for the next request (the same
        one when the answer names none)."""
        resp, _ = await self._request(
            "PATCH", host, url, scopes=frozenset({push_scope(name)}), data=data, ok=_DONE,
            retries=0, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(data) - 1}",
                "Content-Length": str(len(data)),
            },
        )
        if not resp.headers.get("Location"):
            return url
        return self._location(resp, host)

    async def finish_upload(
        self, host: str, name: str, url: str, digest: Digest, data: bytes = b""
    ) -> None:
        """PUT ``?digest=``, with the remaining bytes (all of them for a monolithic upload).

        Not re-sent after a broken connection when it carries bytes (see :meth:`_send`)."""
        sep = "&" if "?" in url else "?"
        await self._request(
            "PUT", host, f"{url}{sep}digest={digest}", scopes=frozenset({push_scope(name)}),
            data=data, ok=_DONE, retries=0 if data else None,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
        )

    async def tags(self, host: str, name: str, *, push: bool = False, pages: int | None = None) -> list[str]:
        """Every tag of ``name`` (following ``Link`` pagination; the first ``pages`` pages
        only, when given). A ``Link`` back to a page already read is an error, not a loop."""
        return await self._listed(host, f"/v2/{name}/tags/list", "tags", f"tag list of {name}",
                                  frozenset({_scope(name, push)}), pages)

    async def catalog(self, host: str) -> list[str]:
        """Every repository the registry's ``/v2/_catalog`` lists (every page, as ``tags``)."""
        return await self._listed(host, "/v2/_catalog", "repositories", "catalog",
                                  frozenset({"registry:catalog:*"}), None)

    async def _listed(self, host: str, url: str, key: str, what: str, scopes: frozenset[str],
                      pages: int | None) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()
        while url and (pages is None or len(seen) < pages):
            if url in seen:
                raise TransportError(f"the registry's {what} links back to a page it "
                                     f"sent ({url}): its pagination loops")
            seen.add(url)
            resp, body = await self._request("GET", host, url, scopes=scopes)
            try:
                listed = json.loads(body).get(key) or []
            except (ValueError, AttributeError, RecursionError) as exc:
                raise TransportError(f"the registry's {what} is not one: {exc!r:.200}") from None
            out.extend(str(t) for t in listed)
            link = resp.headers.get("Link", "")
            # rel="next", or rel=next as some registries write it (RFC 8288 allows both)
            found = re.search(_NEXT, link, re.IGNORECASE)
            url = found.group(1) if found else ""
        return out

    async def referrers(self, host: str, name: str, digest: Digest) -> Index:
        """The referrers of ``digest``: one index of every page the registry sends (spec
        "Listing Referrers": a ``Link`` names the next when they do not fit one)."""
        url = f"/v2/{name}/referrers/{digest}"
        seen: set[str] = set()
        found: list[Index] = []
        while url:
            if url in seen:
                raise TransportError(f"the registry's referrers of {name}@{digest} link back to "
                                     f"a page it sent ({url}): its pagination loops")
            seen.add(url)
            resp, body = await self._request("GET", host, url, scopes=frozenset({pull_scope(name)}),
                                             headers={"Accept": OCI_INDEX})
            found.append(Index.parse(body))
            link = re.search(_NEXT, resp.headers.get("Link", ""), re.IGNORECASE)
            url = link.group(1) if link else ""
        return replace(found[0], manifests=tuple(m for page in found for m in page.manifests))

    async def extension_endpoints(self, host: str, name: str, *, push: bool = False) -> frozenset[str]:
        """The endpoints ``GET /v2/<name>/_oci/ext/discover`` lists (none when the
        registry does not answer it); asked once per repository and session."""
        cache = self._endpoints
        if (host, name) in cache:
            return cache[(host, name)]
        try:
            _, body = await self._request(
                "GET", host, f"/v2/{name}/_oci/ext/discover", scopes=frozenset({_scope(name, push)})
            )
            doc = json.loads(body)
            found = frozenset(
                str(e) for ext in doc.get("extensions") or [] if isinstance(ext, dict)
                for e in ext.get("endpoints") or []
            )
        except (RegistryError, ValueError, AttributeError, TypeError, RecursionError):
            found = frozenset()
        cache[(host, name)] = found
        return found

    async def has_recipes(self, host: str, name: str) -> bool:
        """Whether the repository lists pybuild's recipe extension (``_oci/ext/discover``)."""
        return RECIPE_ENDPOINT in await self.extension_endpoints(host, name)

    async def has_piece_push(self, host: str, name: str) -> bool:
        """Whether the repository takes piece-level pushes (pybuild's extension)."""
        return PIECE_UPLOADS_ENDPOINT in await self.extension_endpoints(host, name, push=True)

    # --- piece-level pushes (docs/piece-index.md) -------------------------------------------
    async def start_piece_upload(self, host: str, name: str, plan: bytes) -> tuple[str, list[int]]:
        """Open a piece session with ``plan``; its URL and the indices of the pieces the
        registry asks for."""
        resp, body = await self._request(
            "POST", host, f"/v2/{name}/{PIECE_UPLOADS_ENDPOINT}/", scopes=frozenset({push_scope(name)}),
            data=plan, ok=(202,), headers={"Content-Type": PLAN_MEDIA_TYPE},
        )
        return self._location(resp, host), _missing(body)

    async def query_pieces(self, host: str, name: str, url: str, plan: bytes) -> list[int]:
        """The pieces an open session still needs (to resume it)."""
        _, body = await self._request(
            "POST", host, url, scopes=frozenset({push_scope(name)}), data=plan,
            headers={"Content-Type": PLAN_MEDIA_TYPE},
        )
        return _missing(body)

    async def patch_pieces(self, host: str, name: str, url: str, pieces: list[tuple[str, int]],
                           data: bytes) -> None:
        """Send whole pieces (``(key, length)`` in the order of ``data``). Sending a piece
        twice is harmless, so a broken request is simply sent again."""
        await self._request(
            "PATCH", host, url, scopes=frozenset({push_scope(name)}), data=data, ok=(202,),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
                "Pybuild-Pieces": ",".join(f"{n}:{k}" for k, n in pieces),
            },
        )

    async def finish_piece_upload(self, host: str, name: str, url: str, digest: Digest,
                                  plan: bytes) -> None:
        sep = "&" if "?" in url else "?"
        await self._request(
            "PUT", host, f"{url}{sep}digest={digest}", scopes=frozenset({push_scope(name)}),
            data=plan, ok=(201,), headers={"Content-Type": PLAN_MEDIA_TYPE},
        )

    async def cancel_piece_upload(self, host: str, name: str, url: str) -> None:
        await self._request("DELETE", host, url, scopes=frozenset({push_scope(name)}), ok=(204,))

    def prefetch_recipe(self, host: str, name: str, digest: Digest) -> None:
        """Ask for the blob's recipe now; the next :meth:`recipe` call for it takes the
        answer (or its failure). A pull that moves a few blobs at a time asks for every
        blob's recipe at its start, so that a blob that waits for its turn does not wait
        a round trip more when it gets it (over a link with 10 ms round trips, ten layers
        four at a time spent two of them per wave)."""
        key = (host, name, str(digest))
        # At most _AHEAD at once: a manifest of thousands of layers (hostile or not) does
        # not open as many requests, nor hold as many recipes (each up to 4 MiB).
        if key not in self._recipes and len(self._recipes) < _AHEAD:
            self._recipes[key] = asyncio.ensure_future(self._get_recipe(host, name, digest))

    async def recipe(self, host: str, name: str, digest: Digest) -> list[tuple[int, int, str]]:
        """The blob's pieces as ``(offset, length, blake3 key)``, checked to tile the blob."""
        ahead = self._recipes.pop((host, name, str(digest)), None)
        if ahead is not None:
            return await ahead
        return await self._get_recipe(host, name, digest)

    async def _get_recipe(self, host: str, name: str, digest: Digest) -> list[tuple[int, int, str]]:
        _, body = await self._request(
            "GET", host, f"/v2/{name}/{RECIPE_ENDPOINT}", params={"digest": str(digest)},
            scopes=frozenset({pull_scope(name)}),
        )
        try:
            doc = json.loads(body)
            pieces = [(int(p["offset"]), int(p["length"]), str(p["key"])) for p in doc["pieces"]]
            size = int(doc["size"])
        except (ValueError, RecursionError, KeyError, TypeError) as exc:
            raise TransportError(f"the registry's recipe of {digest} is not one: {exc!r:.200}") from None
        pos = 0
        for offset, length, _ in pieces:
            if offset != pos or length <= 0:
                raise TransportError(f"recipe of {digest} has a gap or overlap at byte {pos}")
            pos += length
        if pos != size:
            raise TransportError(f"recipe of {digest} covers {pos} bytes, not {size}")
        return pieces



def _scope(name: str, push: bool) -> str:
    return push_scope(name) if push else pull_scope(name)


def _missing(body: bytes) -> list[int]:
    try:
        doc = json.loads(body)
        return [int(i) for i in doc["missing"]]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise TransportError(f"the registry answered a push plan with nonsense: {exc!r:.200}") from None
