"""Piece-level pushes: pybuild's extension next to the recipe endpoint (``_pybuild``).

A client that has cut a blob into pieces (its recipe: BLAKE3 keys and lengths) names
the blob, its recipe and some *bases* (blobs it believes hold many of the same pieces,
such as the previous version's layer); the registry answers which pieces it still
needs, the client sends only those, and the registry commits the blob from the pieces
it received and the pieces of the bases, after hashing the assembled blob (its OCI
digest, streaming; nothing is cut or written again, see :mod:`cas.assemble`)::

    POST   /v2/<name>/_pybuild/blob/uploads/       plan      202 Location, {"missing": [i...]}
    POST   <location>                              plan      200 {"missing": [i...]}  (again: resume)
    PATCH  <location>     Pybuild-Pieces: <len>:<key>,...    the pieces' bytes, in that order  202
    PUT    <location>?digest=<d>                   plan      201, the blob is in <name>
    GET    <location>                                        200 {"pieces": n, "bytes": n}
    DELETE <location>                                        204

The plan (``application/vnd.pybuild.push-plan.v1+json``)::

    {"digest": "sha256:...", "size": 1234,
     "pieces": [{"length": 512, "key": "<blake3 hex>"}, ...],        blob order ("offset"
     "bases": [{"digest": "sha256:...", "repository": "team/app"}]}  optional; must tile)

``missing`` lists the indices (into ``pieces``) of the pieces that are neither received
in this session nor in a base the caller may pull. **No oracle**: a base counts only if
it is linked in a repository the request's credentials may pull (``<name>`` itself, or
one the token grants ``pull`` on); any other base is ignored, exactly as a base that
does not exist. So the answer - and the commit's, which applies the same rule - is a
function of bytes the caller sent and of recipes it could already read with ``GET
_pybuild/blob/recipe``: whether a piece exists anywhere else never shows. A piece the
caller sends that the store already has is kept once, silently (the same answer).

The store keeps SHA-256 states of committed blobs (:mod:`cas.digest_states`; local
files, so on S3/PostgreSQL deployments each replica keeps its own, and one without
them hashes everything). When a plan begins with the first pieces of a readable base
(compared with the base's recipe in the store, not with the plan's claims), the hash of
the blob starts from that base's last kept state (``PieceIngest.expect``); the commit
hashes every byte again when that does not give the expected digest. This is no oracle
either: only the bases above are looked at, and a kept state changes how long the
registry hashes, never any status or body the client sees.

Limits (hostile plans get 400s that say which limit): a plan body of at most
:data:`MAX_PLAN_BYTES`, a blob of at most :data:`MAX_BLOB` bytes (a commit reads and
hashes that much, whatever few bytes were sent), :data:`MAX_PIECES` pieces,
:data:`MAX_BASES` bases, pieces of 1 byte
to :data:`MAX_PIECE` bytes that tile the blob; a PATCH of at most :data:`MAX_PATCH_PIECES`
pieces and :data:`MAX_PATCH_BYTES` bytes, each checked against its key before anything
of it is kept. Sessions count against the same upload limits as ordinary ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cas import (
    BlobUnknown,
    Digest,
    DigestMismatch,
    IngestUnknown,
    PieceMismatch,
    PiecesMissing,
    RecipeInvalid,
)

from ..errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    SIZE_INVALID,
    RegistryError,
)
from ..names import is_valid_name, parse_digest
from . import proxy
from .recipes import commit_into
from .state import GRANT, REGISTRY, Registry, holder
from .upload_bodies import read_body, upload_slot

__all__ = [
    "MAX_BASES",
    "MAX_BLOB",
    "MAX_PATCH_BYTES",
    "MAX_PATCH_PIECES",
    "MAX_PIECE",
    "MAX_PIECES",
    "MAX_PLAN_BYTES",
    "PLAN_MEDIA_TYPE",
    "cancel_piece_upload",
    "finish_piece_upload",
    "patch_pieces",
    "piece_upload_status",
    "query_pieces",
    "start_piece_upload",
    "supported",
]

PLAN_MEDIA_TYPE = "application/vnd.pybuild.push-plan.v1+json"
MAX_PLAN_BYTES = 16 << 20
MAX_PIECES = 1 << 17  # ~40 GB of ~300 KB pieces
MAX_BASES = 64
MAX_PIECE = 16 << 20  # the chunker's largest piece
MAX_BLOB = 64 << 30  # what one plan may assemble: a commit hashes this much
# Listed in one Pybuild-Pieces header: at most 96 x 74 bytes (8-digit lengths), under the
# 8 KiB that aiohttp and many proxies allow a header line.
MAX_PATCH_PIECES = 96
MAX_PATCH_BYTES = 32 << 20
# Piece keys of bases remembered (Registry.piece_keys): ~15 MB, the last versions of
# a few large images.
_CACHED_KEYS = 1 << 17
# Piece sessions are recorded as upload sessions of "<name>@pieces": the ordinary upload
# routes (which look for "<name>") never take one for theirs, and expiry treats both alike.
_SUFFIX = "@pieces"


@dataclass(frozen=True, slots=True)
class Plan:
    digest: Digest
    size: int
    pieces: list[tuple[str, int]]  # (key hex, length) in blob order
    bases: list[tuple[Digest, str | None]]  # (digest, repository or None for <name>)


def supported(request: web.Request) -> bool:
    """Whether this registry takes piece-level pushes: its store can assemble blobs and
    it takes pushes at all (not read-only, not a pull-through cache that refuses them)."""
    reg = request.app[REGISTRY]
    if not hasattr(reg.store, "begin_piece_ingest") or reg.config.read_only:
        return False
    cache = request.app.get(proxy.PROXY)
    return cache is None or cache.mixed


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/_pybuild/blob/uploads/{upload_id}"


def _invalid(message: str, **detail: Any) -> RegistryError:
    return BLOB_UPLOAD_INVALID(message, detail=detail or None)


async def _read_plan(request: web.Request) -> Plan:
    """The request's push plan, read (a large one, or one of unknown length, in an
    upload slot: bodies held in memory at once stay bounded) and checked."""
    async with upload_slot(request.app[REGISTRY], request):
        body = await read_body(request, MAX_PLAN_BYTES, "the push plan")
    if len(body) > _PARSE_INLINE_BYTES:  # a plan of MAX_PIECES: ~0.4 s of CPU, not on the loop
        return await asyncio.to_thread(parse_plan, body)
    return parse_plan(body)


_KEY = re.compile(r"[0-9a-f]{64}")
_PARSE_INLINE_BYTES = 64 * 1024  # a plan of ~600 pieces (a 200 MB blob): parsed in place


def _is_key(text: object) -> bool:
    return isinstance(text, str) and _KEY.fullmatch(text) is not None


def parse_plan(body: bytes) -> Plan:
    """A plan document (see the module docstring), checked; BLOB_UPLOAD_INVALID says
    what is wrong with it."""
    try:
        doc = json.loads(body)
    except RecursionError:
        raise _invalid("the push plan is nested too deeply to be one") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _invalid(f"the push plan is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _invalid("the push plan must be a JSON object")
    text = doc.get("digest")
    digest = parse_digest(text if isinstance(text, str) else "")
    size, raw_pieces, raw_bases = doc.get("size"), doc.get("pieces"), doc.get("bases", [])
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid("the plan's size must be a non-negative integer")
    if size > MAX_BLOB:
        raise _invalid(f"the plan's blob is {size} bytes; piece uploads assemble at most "
                       f"{MAX_BLOB} (push it with an ordinary upload)", limit=MAX_BLOB)
    if not isinstance(raw_pieces, list) or not isinstance(raw_bases, list):
        raise _invalid("the plan's pieces and bases must be lists")
    if len(raw_pieces) > MAX_PIECES:
        raise _invalid(f"the plan names {len(raw_pieces)} pieces; at most {MAX_PIECES} are allowed "
                       "(push the blob with an ordinary upload)", limit=MAX_PIECES)
    if len(raw_bases) > MAX_BASES:
        raise _invalid(f"the plan names {len(raw_bases)} bases; at most {MAX_BASES} are allowed",
                       limit=MAX_BASES)
    pieces: list[tuple[str, int]] = []
    pos = 0
    for i, p in enumerate(raw_pieces):
        if not isinstance(p, dict):
            raise _invalid(f"piece {i} of the plan is not an object")
        key, length, offset = p.get("key"), p.get("length"), p.get("offset", pos)
        if not _is_key(key):
            raise _invalid(f"piece {i}: key must be 64 lowercase hex digits (BLAKE3)")
        if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= MAX_PIECE:
            raise _invalid(f"piece {i}: length must be 1 to {MAX_PIECE} bytes", piece=i)
        if offset != pos:
            raise _invalid(f"piece {i} starts at {offset!r}, not at byte {pos}: pieces must "
                           "tile the blob in order (no gap, no overlap)", piece=i)
        assert isinstance(key, str)
        pieces.append((key, length))
        pos += length
    if pos != size:
        raise _invalid(f"the plan's pieces cover {pos} bytes, its size is {size}")
    bases: list[tuple[Digest, str | None]] = []
    for i, b in enumerate(raw_bases):
        if not isinstance(b, dict) or not isinstance(b.get("digest"), str):
            raise _invalid(f"base {i} of the plan must be an object with a digest")
        repo = b.get("repository")
        if repo is not None and not (isinstance(repo, str) and is_valid_name(repo)):
            raise _invalid(f"base {i}: {str(repo)[:80]!r} is not a repository name")
        bases.append((parse_digest(b["digest"]), repo))
    return Plan(digest, size, pieces, bases)


@dataclass(frozen=True, slots=True)
class _Bases:
    """What the plan's readable bases give (see :func:`_readable_bases`)."""

    keys: set[str]  # their piece keys, as the repositories they are read in see them
    digests: list[Digest]  # the bases themselves (whose kept SHA-256 states may be used)
    # The keys taken from a repository's own recipe (registry.server.recipes): where in
    # which base their bytes are, for when the store holds the blob cut otherwise.
    ranges: dict[str, tuple[Digest, int, int]]


async def _readable_bases(request: web.Request, name: str, plan: Plan) -> _Bases:
    """The piece keys of the plan's bases that the caller may pull, each base's recipe as
    the repository it is named in sees it (that repository's own when it has one:
    the answer is then the same whether or not the store holds the blob cut otherwise),
    and those bases (the only ones whose kept SHA-256 states the ingest may start from)."""
    reg = request.app[REGISTRY]
    grant = request.get(GRANT)
    ranges: dict[str, tuple[Digest, int, int]] = {}

    async def keys_of(digest: Digest, repo: str) -> frozenset[str]:
        # <name> itself: the request was allowed to push there, which needs pull.
        if repo != name and grant is not None and not grant.may_pull(repo):
            return frozenset()
        if not await reg.store.is_linked(holder(repo), digest):
            return frozenset()
        own = await reg.meta.blob_recipe(repo, str(digest))
        if own is None:
            return await base_keys(reg, digest)
        pos = 0
        for key, length in own:
            ranges.setdefault(key, (digest, pos, length))
            pos += length
        return frozenset(key for key, _ in own)

    bases = dict.fromkeys((digest, repo or name) for digest, repo in plan.bases)
    found = await asyncio.gather(*(keys_of(digest, repo) for digest, repo in bases))
    readable = list(dict.fromkeys(digest for (digest, _), keys in zip(bases, found) if keys))
    return _Bases(set().union(*found), readable, ranges)


async def base_keys(reg: Registry, digest: Digest) -> frozenset[str]:
    """The piece keys of blob ``digest`` (none when the store lacks it), remembered in
    ``reg.piece_keys`` (up to :data:`_CACHED_KEYS` keys in all): a push names the same
    bases for every layer, twice (plan and commit), and decoding a recipe costs more
    than the rest of the answer. Whether the caller may read the blob is the caller's
    check, made on every request (never cached)."""
    cache = reg.piece_keys
    keys = cache.get(digest)
    if keys is not None:
        cache.move_to_end(digest)
        return keys
    try:
        recipe = await reg.store.recipe(digest)
    except BlobUnknown:
        return frozenset()
    keys = frozenset(p.key for p in recipe.pieces)
    if len(keys) <= _CACHED_KEYS:
        cache[digest] = keys
        total = sum(len(k) for k in cache.values())
        while total > _CACHED_KEYS:
            total -= len(cache.popitem(last=False)[1])
    return keys


async def _missing(request: web.Request, name: str, plan: Plan, ingest: Any) -> list[int]:
    """The pieces the plan names that are neither received nor in a readable base; the
    ingest starts hashing the plan's blob meanwhile, as far as those pieces go
    (``PieceIngest.expect``: the commit then has only the rest to read; from a readable
    base's kept SHA-256 state, when the plan begins as that base)."""
    bases = await _readable_bases(request, name, plan)
    have = ingest.keys() | bases.keys
    await ingest.expect(plan.pieces, bases.keys, bases.digests)
    return [i for i, (key, _) in enumerate(plan.pieces) if key not in have]


async def _session(reg: Registry, name: str, upload_id: str) -> Any:
    unknown = BLOB_UPLOAD_UNKNOWN(
        f"piece upload {upload_id!r} is not open in repository {name!r} (finished, "
        "cancelled or expired): start a new one with POST", detail={"uuid": upload_id},
    )
    if await reg.meta.upload_repository(upload_id) != name + _SUFFIX:
        raise unknown
    ingest = reg.ingests.get(upload_id)
    if ingest is not None and ingest.closed:
        await _drop(reg, upload_id)
        raise unknown
    if ingest is None:
        try:
            ingest = await reg.store.resume_piece_ingest(upload_id)  # type: ignore[attr-defined]
        except IngestUnknown:
            await _drop(reg, upload_id)
            raise unknown from None
        reg.ingests[upload_id] = ingest
        reg.upload_limits.update(upload_id, ingest.offset)
    return ingest


async def _drop(reg: Registry, upload_id: str) -> None:
    reg.forget_upload(upload_id)
    with contextlib.suppress(Exception):
        await reg.meta.remove_upload(upload_id)


def _answer(name: str, upload_id: str, missing: list[int], status: int) -> web.Response:
    return web.json_response(
        {"missing": missing}, status=status,
        headers={"Location": _location(name, upload_id), "Docker-Upload-UUID": upload_id},
    )


# --- handlers ----------------------------------------------------------------------------
async def start_piece_upload(request: web.Request, name: str) -> web.Response:
    reg = request.app[REGISTRY]
    plan = await _read_plan(request)
    ingest = await reg.open_session(
        request.remote or "", name + _SUFFIX,
        lambda: reg.store.begin_piece_ingest(algorithm=plan.digest.algorithm))  # type: ignore[attr-defined]
    return _answer(name, ingest.id, await _missing(request, name, plan, ingest), 202)


async def query_pieces(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    plan = await _read_plan(request)
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        return _answer(name, upload_id, await _missing(request, name, plan, ingest), 200)


def _parse_piece_list(text: str | None) -> list[tuple[str, int]]:
    if not text:
        raise _invalid("a PATCH of pieces needs Pybuild-Pieces: <length>:<key>,...")
    items = text.split(",")
    if len(items) > MAX_PATCH_PIECES:
        raise _invalid(f"at most {MAX_PATCH_PIECES} pieces per request", limit=MAX_PATCH_PIECES)
    out = []
    for i, item in enumerate(items):
        length, _, key = item.strip().partition(":")
        if not (length.isascii() and length.isdigit() and len(length) <= 9 and _is_key(key)):
            raise _invalid(f"Pybuild-Pieces entry {i} is not <length>:<64 hex digits>")
        if not 0 < int(length) <= MAX_PIECE:
            raise _invalid(f"Pybuild-Pieces entry {i}: a piece is 1 to {MAX_PIECE} bytes")
        out.append((key, int(length)))
    total = sum(n for _, n in out)
    if total > MAX_PATCH_BYTES:
        raise _invalid(f"the pieces of one request are {total} bytes; at most "
                       f"{MAX_PATCH_BYTES} are allowed", limit=MAX_PATCH_BYTES)
    return out


async def patch_pieces(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    listed = _parse_piece_list(request.headers.get("Pybuild-Pieces"))
    total = sum(n for _, n in listed)
    if await reg.meta.upload_repository(upload_id) != name + _SUFFIX:
        await _session(reg, name, upload_id)  # raises BLOB_UPLOAD_UNKNOWN
    allowance = reg.upload_limits.allowance(upload_id)
    if allowance is not None and total > allowance:
        reg.upload_limits.refuse_bytes(upload_id, total)
    # The body is read outside the session's lock: a client's batches for one blob
    # arrive side by side and only take turns to be stored.
    async with reg.upload_slots.hold(request.remote or ""):
        body = await read_body(request, total, "the pieces")
    if len(body) != total:
        raise SIZE_INVALID(f"the body is {len(body)} bytes, the pieces listed {total}",
                           detail={"expected": total, "actual": len(body)})
    view = memoryview(body)
    pieces, pos = [], 0
    for key, length in listed:
        pieces.append((key, view[pos : pos + length]))
        pos += length
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        try:
            await ingest.add_pieces(pieces)
        except PieceMismatch as exc:
            raise DIGEST_INVALID(str(exc), detail={"piece": exc.index, "key": exc.claimed}) from exc
        except BaseException:
            if ingest.closed:  # the store failed (a full disk): the session is gone
                await _drop(reg, upload_id)
            raise
        reg.upload_limits.update(upload_id, ingest.offset)
    return web.Response(status=202, headers={
        "Location": _location(name, upload_id), "Docker-Upload-UUID": upload_id,
        "Content-Length": "0",
    })


async def finish_piece_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    text = request.query.get("digest")
    if not text:
        raise DIGEST_INVALID("closing a piece upload needs ?digest=<digest of the whole blob>")
    digest = parse_digest(text)
    plan = await _read_plan(request)
    if plan.digest != digest:
        raise DIGEST_INVALID(f"the plan is for {plan.digest}, the request closes {digest}")
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        bases = await _readable_bases(request, name, plan)
        try:
            info = await ingest.commit_recipe(digest, plan.pieces, known=bases.keys,
                                              link_own=holder(name), ranges=bases.ranges)
        except PiecesMissing as exc:
            raise _invalid(str(exc), missing=exc.indices) from exc
        except RecipeInvalid as exc:
            raise _invalid(str(exc)) from exc
        except DigestMismatch as exc:
            await _drop(reg, upload_id)
            raise DIGEST_INVALID(
                f"the assembled pieces hash to {exc.actual}, not {digest}; nothing was stored",
                detail={"expected": str(digest), "actual": str(exc.actual)},
            ) from exc
        except BaseException:
            if ingest.closed:
                await _drop(reg, upload_id)
            raise
        await _drop(reg, upload_id)
    await commit_into(reg, name, info)
    await reg.meta.ensure_repository(name)
    return web.Response(status=201, headers={
        "Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": str(digest),
        "Content-Length": "0",
    })


async def piece_upload_status(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        return web.json_response({"pieces": len(ingest.keys()), "bytes": ingest.offset},
                                 headers={"Location": _location(name, upload_id)})


async def cancel_piece_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        with contextlib.suppress(IngestUnknown):
            await ingest.abort()
        await _drop(reg, upload_id)
    return web.Response(status=204, headers={"Content-Length": "0"})
