"""Manifests: ``GET``/``HEAD``/``PUT``/``DELETE /v2/<name>/manifests/<reference>``.

Spec end-3, end-7, end-9. Manifests are stored byte-exact as ``cas`` blobs linked to the
repository; ``registry.db`` records which manifests each repository holds (with their
media type, subject and artifact type for the referrers API) and the tags. Hot manifests
and tag resolutions are served from an in-memory cache without touching the database.

PUT validates: size <= 4 MiB (413), JSON and schema (MANIFEST_INVALID), a digest reference
matches the body (DIGEST_INVALID), config/layers readable in the repository and index
entries that are manifests of the repository (MANIFEST_BLOB_UNKNOWN, one per missing
reference). Descriptors carrying their bytes in ``data`` and the well-known empty JSON blob
are stored on the fly; nondistributable (foreign) layers are not required. A ``subject``
need not exist yet (spec) and is echoed as ``OCI-Subject``. Every check runs before
anything is written, so a refused PUT changes no link, tag or referrer. A GET or HEAD by
digest from a caller granted push keeps the manifest from retention for the upload grace
(renewals.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from cas import BlobUnknown, Digest
from cas.holders import repository_holder

from ..errors import (
    DIGEST_INVALID,
    MANIFEST_BLOB_UNKNOWN,
    MANIFEST_INVALID,
    MANIFEST_UNKNOWN,
    UNSUPPORTED,
    RegistryError,
)
from ..names import parse_pull_reference, parse_reference, validate_tag
from ..oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    Descriptor,
    Index,
    InvalidObject,
    Manifest,
    parse_manifest,
)
from .conditional import if_none_match, none_match
from .expect import send_continue
from .metadata import ManifestRecord, ManifestsMissing
from .recipes import put_into
from .renewals import may_push, renew_manifest
from .state import BYTES_RECEIVED, DELETED_TAGS, REGISTRY, CachedManifest, Registry

__all__ = ["MAX_MANIFEST_BYTES", "delete_manifest", "get_manifest", "put_manifest"]

# Index entries that can only be manifests; one of another type may be a blob.
_MANIFEST_ENTRY_TYPES = MANIFEST_TYPES | INDEX_TYPES | {DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED}

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_MAX_TAGS_PER_PUT = 32
_PARSE_INLINE_BYTES = 64 * 1024
# Times a manifest PUT stores its bytes again when a GC took them before they were linked.
_STORE_AGAIN = 2


def _unknown(name: str, reference: str) -> RegistryError:
    return MANIFEST_UNKNOWN(
        f"manifest {reference!r} is not in repository {name!r}",
        detail={"name": name, "reference": reference},
    )


async def _load(reg: Registry, name: str, reference: str) -> CachedManifest:
    """Resolve ``reference`` in ``name`` to a servable manifest: from the cache while the
    metadata's generation has not moved, else asked again (manifest_cache.py)."""
    cache = reg.cache
    seen = cache.sync()
    digest = cache.tag(name, reference)
    if digest is not None:
        entry = cache.get(name, digest)
        if entry is not None:
            return entry
    ref = parse_pull_reference(reference)
    if ref is None:
        raise _unknown(name, reference)
    if ref.digest is not None:
        digest = str(ref.digest)
        entry = cache.get(name, digest)
        if entry is not None:
            return entry
    else:
        assert ref.tag is not None
        digest = await reg.meta.resolve_tag(name, ref.tag)
        if digest is None:
            raise _unknown(name, reference)
    record = await reg.meta.get_manifest(name, digest)
    if record is None:
        raise _unknown(name, reference)
    entry = cache.body(name, digest)
    if entry is None or entry.media_type != record.media_type:
        body = await reg.store.read_bytes(Digest.parse(digest))
        entry = CachedManifest(digest, record.media_type, body, f'"{digest}"')
    cache.put(name, entry, seen)
    if ref.tag is not None:
        cache.set_tag(name, ref.tag, digest, seen)
    return entry


def _accepted(request: web.Request) -> frozenset[str] | None:
    """The media types the request's Accept headers list (Docker clients send several
    headers); None when anything goes: no Accept header, ``*/*`` or ``application/*``.
    Parameters and q-values are ignored, like CNCF Distribution."""
    values = request.headers.getall("Accept", ())
    if not values:
        return None
    listed = set()
    for value in values:
        for item in value.split(","):
            accepted = item.split(";", 1)[0].strip().lower()
            if accepted in ("*/*", "application/*", ""):
                return None
            listed.add(accepted)
    return frozenset(listed)


async def _negotiate(
    reg: Registry, name: str, reference: str, entry: CachedManifest, accepted: frozenset[str],
    fetch: Callable[[str], Awaitable[None]] | None,
) -> CachedManifest:
    """What to serve a client whose Accept does not list the stored type:

    - an index or manifest list asked for by tag: its linux/amd64 manifest, under its own
      digest, when Accept lists that manifest's type (a client that takes images but not
      lists, as CNCF Distribution answers it for a Docker manifest list); else 404
      MANIFEST_UNKNOWN: never the list itself, which such a client cannot use;
    - an OCI manifest, or an OCI index by digest: 404 MANIFEST_UNKNOWN;
    - a Docker schema 2 manifest, or a manifest list by digest: itself. Distribution serves
      them by digest whatever Accept says (by tag, 2.8 rewrote a schema 2 manifest into
      schema 1, which pybuild does not serve; 3.0 serves it as it is).

    A request by digest is never answered with another digest. ``fetch`` brings a
    manifest by digest into ``name`` first (the pull-through cache's).
    """
    media_type = entry.media_type
    by_tag = ":" not in reference
    if by_tag and media_type in INDEX_TYPES:
        kind = "a manifest list" if media_type == DOCKER_MANIFEST_LIST else "an index"
        child = _default_platform_manifest(entry.body)
        if child is None or child.media_type not in accepted:
            what = (
                "without a linux/amd64 manifest, and the Accept header does not list it"
                if child is None else f"whose linux/amd64 manifest is of type "
                f"{child.media_type}, and the Accept header lists neither"
            )
            raise MANIFEST_UNKNOWN(
                f"{reference!r} is {kind} of type {media_type} {what}: add {media_type} to Accept",
                detail={"mediaType": media_type},
            )
        if fetch is not None:
            await fetch(str(child.digest))
        served = await _load(reg, name, str(child.digest))
        if served.media_type not in accepted:  # the list's descriptor said another type
            raise MANIFEST_UNKNOWN(
                f"{reference!r} is {kind} whose linux/amd64 manifest is of type "
                f"{served.media_type}, which the Accept header does not list: add "
                f"{media_type} to Accept",
                detail={"mediaType": media_type},
            )
        return served
    if media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST):
        return entry
    kind = "an index" if media_type in INDEX_TYPES else "a manifest"
    raise MANIFEST_UNKNOWN(
        f"{reference!r} is {kind} of type {media_type}, which the Accept "
        "header does not list: add it to Accept",
        detail={"mediaType": media_type},
    )


def _default_platform_manifest(body: bytes) -> Descriptor | None:
    """A list's or index's linux/amd64 entry (Distribution's default platform, whatever
    the server's), or None."""
    try:
        index = Index.parse(body)
    except InvalidObject:
        return None
    for d in index.manifests:
        if d.platform is not None and (d.platform.os, d.platform.architecture) == ("linux", "amd64"):
            return d
    return None


async def get_manifest(
    request: web.Request, name: str, reference: str,
    fetch: Callable[[str], Awaitable[None]] | None = None,
) -> web.Response:
    """``fetch``: see :func:`_negotiate`."""
    reg = request.app[REGISTRY]
    entry = await _load(reg, name, reference)
    accepted = _accepted(request)
    if accepted is not None and entry.media_type not in accepted:
        served = await _negotiate(reg, name, reference, entry, accepted, fetch)
        if served is not entry and reg.pulls is not None and request.method == "GET":
            reg.pulls.note(name, entry.digest)  # the list the tag names was pulled too
        entry = served
    # By digest, before a push (an index's manifests): kept for the upload grace. False:
    # a retention run took it since _load.
    if (":" in reference and not reg.config.read_only and may_push(request, name)
            and not await renew_manifest(reg, name, entry.digest)):
        reg.cache.drop(name, entry.digest)
        raise _unknown(name, reference)
    if reg.pulls is not None and request.method == "GET":
        reg.pulls.note(name, entry.digest)  # for retention: a dict store, written in batches
    if none_match(if_none_match(request), entry.digest):
        return web.Response(status=304, headers=entry.headers)
    if request.method == "HEAD":
        return web.Response(
            status=200, headers={**entry.headers, "Content-Length": str(len(entry.body))}
        )
    return web.Response(status=200, body=entry.body, headers=entry.headers)


async def _read_body(request: web.Request) -> bytes:
    length = request.content_length
    too_big = MANIFEST_INVALID(
        f"manifest is larger than {MAX_MANIFEST_BYTES} bytes: split it or push it as a blob",
        detail={"limit": MAX_MANIFEST_BYTES},
        status=413,
    )
    if length is not None and length > MAX_MANIFEST_BYTES:
        raise too_big
    body = bytearray()
    # A manifest (at most 4 MiB) has http.body_timeout to arrive whole.
    stall = request.app[REGISTRY].config.http_body_timeout or None
    await send_continue(request)
    try:
        async with asyncio.timeout(stall):
            async for chunk in request.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_MANIFEST_BYTES:
                    raise too_big
    except TimeoutError:
        request.app[REGISTRY].limit_log.hit("body_timeout", request.remote, seconds=stall)
        raise MANIFEST_INVALID(
            f"manifest body not received within {stall:g} s ({len(body)} bytes came): "
            "send it again"
        ) from None
    request[BYTES_RECEIVED] = len(body)
    return bytes(body)


async def _plan_references(
    reg: Registry, name: str, obj: Manifest | Index
) -> tuple[list[tuple[Descriptor, bytes]], tuple[str, ...]]:
    """Check every reference of ``obj`` in ``name`` without changing anything.

    Returns the contents the manifest carries itself (``data`` fields, the empty JSON
    blob) that are not yet in the repository, and the entries of an index that are blobs
    of the repository rather than manifests. Raises MANIFEST_BLOB_UNKNOWN, one per
    missing reference, or MANIFEST_INVALID for a size that disagrees with the blob.

    An index entry of a manifest or index media type must be a manifest of the
    repository. An entry of any other type may also be a blob of it, as CNCF
    Distribution accepts: BuildKit's registry cache (``--cache-to type=registry``,
    without ``image-manifest=true``) is an index listing its layers and its cache
    config (``application/vnd.buildkit.cacheconfig.v0``).
    """
    missing: list[RegistryError] = []
    carried: list[tuple[Descriptor, bytes]] = []
    blob_entries: list[str] = []
    h = repository_holder(name)
    if isinstance(obj, Index):
        wanted = [str(d.digest) for d in obj.manifests]
        present = await reg.meta.manifests_present(name, wanted)
        for d in obj.manifests:
            if str(d.digest) in present:
                continue
            if d.media_type in _MANIFEST_ENTRY_TYPES:
                missing.append(_blob_unknown(d, "manifest"))
            elif not await reg.store.is_linked(h, d.digest):
                missing.append(_blob_unknown(d, "manifest or blob"))
            elif await _linked_blob_fits(reg, d, missing):
                blob_entries.append(str(d.digest))
    else:
        for d in obj.references():
            if d.nondistributable:
                continue
            if await reg.store.is_linked(h, d.digest):
                await _linked_blob_fits(reg, d, missing)
                continue
            content = d.data
            if content is None and d.digest == EMPTY_JSON_DIGEST and d.size == len(EMPTY_JSON):
                content = EMPTY_JSON
            if content is None:
                missing.append(_blob_unknown(d, "blob"))
            else:
                carried.append((d, content))
    if missing:
        raise RegistryError.many(missing)
    return carried, tuple(blob_entries)


async def _linked_blob_fits(reg: Registry, d: Descriptor, missing: list[RegistryError]) -> bool:
    """Whether the blob ``d`` names, linked in the repository, is still stored and has
    the size ``d`` states: MANIFEST_BLOB_UNKNOWN (added to ``missing``) if it is gone,
    MANIFEST_INVALID (raised) for another size."""
    info = await reg.store.stat(d.digest)
    if info is None:
        missing.append(_blob_unknown(d, "blob"))
        return False
    if info.size != d.size:
        raise MANIFEST_INVALID(
            f"descriptor {d.digest} says {d.size} bytes but the blob has {info.size}",
            detail={"digest": str(d.digest)},
        )
    return True


def _blob_unknown(d: Descriptor, what: str) -> RegistryError:
    return MANIFEST_BLOB_UNKNOWN(
        f"the manifest references {what} {d.digest} ({d.media_type}), which is not in this "
        f"repository: push it first",
        detail={"digest": str(d.digest), "mediaType": d.media_type},
    )


def _references(obj: Manifest | Index) -> tuple[str, ...]:
    """What ``obj`` needs in its repository: an index's manifests, an image's blobs."""
    if isinstance(obj, Index):
        return tuple(str(d.digest) for d in obj.manifests)
    return tuple(str(d.digest) for d in obj.references() if not d.nondistributable)


async def _commit(
    reg: Registry,
    name: str,
    body: bytes,
    digest: Digest,
    carried: list[tuple[Descriptor, bytes]],
    record: ManifestRecord,
    tags: tuple[str, ...],
) -> None:
    """Make a validated manifest visible: its bytes and carried blobs linked into the
    repository in one cas transaction, then its record and tags in one metadata
    transaction; if the second fails, the links the first added are taken back.

    The cas transaction also links again everything the manifest references, which
    makes those links fresh: retention (retention.py) unlinks only blobs whose link is
    older than its upload grace, so a blob this push relies on cannot be unlinked between
    the checks above and the metadata transaction that makes the manifest reference it.
    A referenced blob that went in that window (GC took it) fails the push here, with
    nothing written, rather than leave a manifest whose blob is missing."""
    h = repository_holder(name)
    wanted = [Digest.parse(r) for r in record.references or ()]
    ours = {digest, *(d.digest for d, _ in carried)}
    for attempt in range(_STORE_AGAIN + 1):
        # Stored unlinked first: invisible until linked, and collected by GC if we stop
        # here. With the repository's own recipe of each (registry.server.recipes).
        for d, content in carried:
            await put_into(reg, name, content, d.digest)
        await put_into(reg, name, body, digest)
        try:
            added = await reg.store.link_all(h, [*wanted, *(d.digest for d, _ in carried), digest])
            break
        except BlobUnknown as exc:
            if exc.digest in ours and attempt < _STORE_AGAIN:
                # A GC with a grace shorter than this moment took bytes just stored, which
                # no holder linked yet: they are still here to store again.
                continue
            raise MANIFEST_BLOB_UNKNOWN(
                f"the manifest references {exc.digest}, which was removed from repository "
                f"{name!r} meanwhile: push it again",
                detail={"digest": str(exc.digest)},
            ) from exc
    try:
        await reg.meta.put_manifest(record, tags)
    except ManifestsMissing as exc:
        for linked in added:
            with contextlib.suppress(Exception):
                await reg.store.unlink(h, linked)
        raise RegistryError.many([
            MANIFEST_BLOB_UNKNOWN(
                f"the index references manifest {d}, which was removed from repository "
                f"{name!r} meanwhile: push it again",
                detail={"digest": d},
            )
            for d in exc.digests
        ]) from exc
    except BaseException:
        for linked in added:
            with contextlib.suppress(Exception):
                await reg.store.unlink(h, linked)
        raise


async def _parse(body: bytes, content_type: str | None) -> tuple[str, Manifest | Index]:
    try:
        if len(body) > _PARSE_INLINE_BYTES:  # a few ms of CPU: not on the event loop
            return await asyncio.to_thread(parse_manifest, body, content_type)
        return parse_manifest(body, content_type)
    except InvalidObject as exc:
        raise MANIFEST_INVALID(f"invalid manifest: {exc}", detail={"reason": str(exc)}) from exc


async def put_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    reg = request.app[REGISTRY]
    ref = parse_reference(reference)
    extra_tags = tuple(validate_tag(t) for t in request.query.getall("tag", ()))
    if len(extra_tags) > _MAX_TAGS_PER_PUT:
        raise UNSUPPORTED(f"at most {_MAX_TAGS_PER_PUT} tags per request", status=414)
    body = await _read_body(request)
    algorithm = ref.digest.algorithm if ref.digest is not None else "sha256"
    if len(body) > _PARSE_INLINE_BYTES:
        digest = await asyncio.to_thread(Digest.of, body, algorithm)
    else:
        digest = Digest.of(body, algorithm)
    if ref.digest is not None and digest != ref.digest:
        raise DIGEST_INVALID(
            f"the manifest hashes to {digest}, not {ref.digest}",
            detail={"expected": str(ref.digest), "actual": str(digest)},
        )
    media_type, obj = await _parse(body, request.headers.get("Content-Type"))
    # Everything is checked before anything changes: a refused PUT leaves no trace.
    carried, blob_entries = await _plan_references(reg, name, obj)
    subject = obj.subject
    tags = (ref.tag, *extra_tags) if ref.tag is not None else extra_tags
    record = ManifestRecord(
        repo=name,
        digest=str(digest),
        media_type=media_type,
        size=len(body),
        subject=str(subject.digest) if subject is not None else None,
        artifact_type=obj.effective_artifact_type(),
        annotations=obj.annotations,
        references=_references(obj),
        blob_entries=blob_entries,
    )
    await _commit(reg, name, body, digest, carried, record, tags)
    # The bytes only: this commit moved the metadata's generation, so the next GET
    # confirms the manifest and its tags there (manifest_cache.py).
    reg.cache.put(name, CachedManifest(str(digest), media_type, body, f'"{digest}"'))
    headers = {
        "Location": f"/v2/{name}/manifests/{digest}",
        "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
    }
    if subject is not None:
        headers["OCI-Subject"] = str(subject.digest)
    resp = web.Response(status=201, headers=headers)
    if extra_tags:
        resp.headers["OCI-Tag"] = ", ".join(extra_tags)
    return resp


async def delete_manifest(request: web.Request, name: str, reference: str) -> web.Response:
    reg = request.app[REGISTRY]
    ref = parse_reference(reference)
    if ref.tag is not None:
        if not reg.config.delete_tags:
            raise UNSUPPORTED("tag deletion is disabled on this registry (delete.tags: false)")
        if not await reg.meta.delete_tag(name, ref.tag):
            raise _unknown(name, reference)
        reg.cache.drop_tag(name, ref.tag)
    else:
        if not reg.config.delete_manifests:
            raise UNSUPPORTED(
                "manifest deletion is disabled on this registry (delete.manifests: false)"
            )
        assert ref.digest is not None
        dropped = await reg.meta.delete_manifest(name, str(ref.digest))
        if dropped is None:
            raise _unknown(name, reference)
        request[DELETED_TAGS] = dropped  # for the notification events
        reg.cache.drop(name, str(ref.digest))
        await reg.store.unlink(repository_holder(name), ref.digest)
    return web.Response(status=202, headers={"Content-Length": "0"})
