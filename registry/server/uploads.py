"""Blob uploads (spec "Pushing blobs"): sessions, chunks, monolithic pushes, mounts.

::

    POST   /v2/<name>/blobs/uploads/                     start a session         202
    POST   /v2/<name>/blobs/uploads/?digest=<d>          monolithic push         201
    POST   /v2/<name>/blobs/uploads/?digest-algorithm=a  session hashing with a  202
    POST   /v2/<name>/blobs/uploads/?mount=<d>[&from=<repo>]  cross-repo mount   201 (202 if not)
    PATCH  <location>          append a chunk (Content-Range) or a stream (none)  202
    PUT    <location>?digest=<d>   optional last chunk, then close              201
    GET    <location>          status: 204 + Range 0-<last byte>
    DELETE <location>          cancel                                          204

An upload session *is* a ``cas`` ingest: the upload UUID is the ingest id, the bytes go
straight into the ingest (bounded memory) and the ingest is checkpointed and *parked* at
the end of every request (it gives back every buffer until the next request), so a
session survives a server restart and an idle one holds no memory. How many sessions,
and how many bytes in them, a client may hold is bounded (``limits.UploadLimits``: 429
``TOOMANYREQUESTS``); an upload body that sends nothing for ``http.body_timeout``
seconds ends its request. A session whose ingest failed (a full disk aborts it) is
forgotten at once: afterwards it is ``BLOB_UPLOAD_UNKNOWN``, never a session claiming
bytes it lost. ``registry.db`` remembers which
repository a session belongs to; a session used through another repository is unknown.
A failed commit (digest or size mismatch) aborts the ingest: nothing becomes visible.
A commit records the upload's own cut as the repository's recipe of the blob before
linking it, and a mount copies the source's (:mod:`registry.server.recipes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from cas import (
    ALGORITHMS,
    BlobUnknown,
    CasError,
    Digest,
    DigestMismatch,
    IngestOffsetMismatch,
    IngestUnknown,
    SizeMismatch,
)
from cas.buffers import POOL, trim_heap
from cas.pack_files import STAGING

from ..errors import (
    BLOB_UPLOAD_INVALID,
    BLOB_UPLOAD_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    RegistryError,
)
from ..names import is_valid_name, parse_digest
from .expect import send_continue
from .httputil import parse_content_range
from .recipes import commit_into, mount_recipe
from .state import BYTES_RECEIVED, GRANT, REGISTRY, USER, Registry, holder
from .upload_bodies import PROGRESS, upload_slot

__all__ = [
    "UPLOAD_READ_BUFFER",
    "cancel_upload",
    "finish_upload",
    "patch_upload",
    "start_upload",
    "upload_status",
]

# aiohttp's read_bufsize for the server (set in app.py): see there.
UPLOAD_READ_BUFFER = 1 << 20


def _location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _range(offset: int) -> str:
    # Spec: "Range: 0-<end-of-range>", the last byte received; an empty session reports 0-0
    # as CNCF Distribution does (clients treat it as "nothing yet").
    return f"0-{max(offset - 1, 0)}"


def _session_headers(name: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": _location(name, upload_id),
        "Range": _range(offset),
        "Docker-Upload-UUID": upload_id,
        "Content-Length": "0",
    }


def _created(name: str, digest: Digest) -> web.Response:
    return web.Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": str(digest),
            "Content-Length": "0",
        },
    )


def _commit_error(exc: Exception, digest: Digest) -> RegistryError:
    if isinstance(exc, DigestMismatch):
        return DIGEST_INVALID(
            f"uploaded content hashes to {exc.actual}, not {digest}; nothing was stored",
            detail={"expected": str(digest), "actual": str(exc.actual)},
        )
    if isinstance(exc, SizeMismatch):
        return SIZE_INVALID(
            f"received {exc.actual} bytes, expected {exc.expected}; nothing was stored",
            detail={"expected": exc.expected, "actual": exc.actual},
        )
    raise exc




async def _pump(request: web.Request, ingest: Any, allowance: int | None = None,
                on_excess: Callable[[int], None] | None = None) -> int:
    """Stream the request body into ``ingest``; the number of bytes written.

    A body that breaks off (client gone, truncated, bad chunking) or sends nothing for
    ``http.body_timeout`` seconds is BLOB_UPLOAD_INVALID; storage errors propagate
    unchanged (they are not the client's fault). Past ``allowance`` bytes,
    ``on_excess(written)`` is called (it raises).
    """
    reg = request.app[REGISTRY]
    stall = reg.config.http_body_timeout or None
    loop = asyncio.get_running_loop()
    written = 0
    content = request.content
    await send_continue(request)
    reg.streaming += 1
    try:
        # One timer for the whole body (a wait_for per chunk would cost a task per
        # 256 KiB), pushed back whenever PROGRESS more bytes came: a body trickling a
        # byte now and then is as stalled as a silent one.
        deadline = loop.time() + stall if stall else None
        mark = 0
        async with asyncio.timeout_at(deadline) as timer:
            while True:
                # Each chunk as the connection delivered it (up to 256 KiB): no join into
                # larger buffers, the ingest batches them for its worker threads itself.
                chunk, end_of_http_chunk = await content.readchunk()
                if not chunk:
                    if end_of_http_chunk and not content.at_eof():
                        continue  # the end of one chunk of a chunked body, not of the body
                    # (aiohttp's one shared reader of every body-less request answers
                    # "end of a chunk" forever once its end was read: at EOF, it ends.)
                    break
                if on_excess and allowance is not None and written + len(chunk) > allowance:
                    on_excess(written + len(chunk))
                timer.reschedule(None)  # not while the ingest waits for its threads
                paused = loop.time()
                await ingest.write(chunk)
                written += len(chunk)
                if deadline is not None and stall:
                    now = loop.time()
                    deadline += now - paused
                    if written - mark >= PROGRESS:
                        mark, deadline = written, now + stall
                    timer.reschedule(deadline)
    except (CasError, RegistryError):
        raise
    except TimeoutError as exc:
        reg.limit_log.hit("body_timeout", request.remote, seconds=stall, received=written)
        raise BLOB_UPLOAD_INVALID(
            f"upload body sent nothing for {stall:g} s after {written} bytes; the upload "
            "holds what arrived: ask its status (GET) and resume from there",
        ) from exc
    except Exception as exc:  # ConnectionResetError, aiohttp payload errors
        # aiohttp's StreamReader keeps the exception it raised, whose traceback holds the
        # reader's frame: a cycle that kept each broken body's buffered bytes (up to
        # 2 MiB) until a full garbage collection. Without the traceback, they go now.
        exc.__traceback__ = None
        raise BLOB_UPLOAD_INVALID(
            f"upload body interrupted after {written} bytes: {exc}"
        ) from exc
    finally:
        reg.streaming -= 1
        request[BYTES_RECEIVED] = request.get(BYTES_RECEIVED, 0) + written
    return written


def _release_memory(reg: Registry) -> None:
    """Give freed heap pages back to the system soon, off the event loop: ingests that
    parked or ended freed megabytes that glibc would otherwise keep. At most once a
    second, and always once after the last release. When no upload is streaming, the
    pooled buffers go too."""
    if reg.trim_pending:
        return
    loop = asyncio.get_running_loop()
    reg.trim_pending = True

    def release() -> None:
        if not reg.streaming:
            POOL.clear()
            STAGING.clear()
        trim_heap(force=True)

    def run() -> None:
        reg.trim_pending = False
        reg.trimmed_at = time.monotonic()
        loop.run_in_executor(None, release)

    loop.call_later(max(0.0, reg.trimmed_at + 1.0 - time.monotonic()), run)


def _content_length(request: web.Request) -> int | None:
    text = request.headers.get("Content-Length")
    if text is None:
        return None
    # aiohttp has parsed it already; still, "²".isdigit() is true and int() of 5,000 digits
    # raises, so accept ASCII digits up to int64 only.
    if not (text.isascii() and text.isdigit() and len(text) <= 19):
        raise SIZE_INVALID(f"Content-Length {text[:64]!r} is not a number of bytes")
    return int(text)


# --- POST -------------------------------------------------------------------------------
async def start_upload(request: web.Request, name: str) -> web.Response:
    reg = request.app[REGISTRY]
    query = request.query
    mount = query.get("mount")
    if mount:  # an empty ``mount=`` asks for nothing, as Distribution reads it: a session
        mounted = await _try_mount(reg, request, name, parse_digest(mount), query.get("from"))
        if mounted is not None:
            return mounted
    algorithm = query.get("digest-algorithm", "sha256")
    if algorithm not in ALGORITHMS:
        raise DIGEST_INVALID(
            f"unsupported digest algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}",
            detail={"digest-algorithm": algorithm},
        )
    digest_text = query.get("digest")
    if digest_text is not None:
        digest = parse_digest(digest_text)
        length = _content_length(request)
        has_body = (length or 0) > 0 or request.body_exists
        if has_body or digest == Digest.of(b"", digest.algorithm):
            return await _monolithic(reg, request, name, digest, length)
        algorithm = digest.algorithm  # no body: fall back to a session (spec end-4b 202)
    async def begin() -> Any:
        ingest = await reg.store.begin_ingest(algorithm=algorithm)
        try:
            await ingest.park()  # an idle session holds no buffers
        except BaseException:
            await ingest.abort()
            raise
        return ingest

    ingest = await reg.open_session(request.remote or "", name, begin)
    return web.Response(status=202, headers=_session_headers(name, ingest.id, 0))


async def _monolithic(
    reg: Registry, request: web.Request, name: str, digest: Digest, length: int | None
) -> web.Response:
    async with upload_slot(reg, request):
        return await _monolithic_in_slot(reg, request, name, digest, length)


async def _monolithic_in_slot(
    reg: Registry, request: web.Request, name: str, digest: Digest, length: int | None
) -> web.Response:
    ingest = await reg.store.begin_ingest(algorithm=digest.algorithm)
    try:
        await _pump(request, ingest)
        if length is not None and ingest.offset != length:
            raise SIZE_INVALID(
                f"received {ingest.offset} bytes but Content-Length said {length}",
                detail={"expected": length, "actual": ingest.offset},
            )
        try:
            info = await ingest.commit(digest, link_own=holder(name))
        except (DigestMismatch, SizeMismatch) as exc:
            raise _commit_error(exc, digest) from exc
    except BaseException:
        with contextlib.suppress(Exception):
            await ingest.abort()
        raise
    finally:
        _release_memory(reg)
    await commit_into(reg, name, info)
    await reg.meta.ensure_repository(name)
    return _created(name, digest)


async def _try_mount(
    reg: Registry, request: web.Request, name: str, digest: Digest, source: str | None
) -> web.Response | None:
    """Link ``digest`` into ``name`` if a repository the caller may read holds it."""
    grant = request.get(GRANT)
    if source is not None:
        # One link looked up, not every holder: a base layer may be in 10,000 repositories.
        if (not is_valid_name(source) or (grant is not None and not grant.may_pull(source))
                or not await reg.store.is_linked(holder(source), digest)):
            return None
    else:
        readable = list(await reg.readable_holders(digest, request.get(USER), grant))
        if not readable:
            return None
        source = min(readable)
    try:
        await mount_recipe(reg, source, name, digest)
        await reg.store.link(holder(name), digest)
    except BlobUnknown:
        return None
    await reg.meta.ensure_repository(name)
    return _created(name, digest)


# --- sessions ---------------------------------------------------------------------------
async def _session(reg: Registry, name: str, upload_id: str) -> Any:
    """The open ingest behind ``upload_id`` in ``name``; BLOB_UPLOAD_UNKNOWN otherwise."""
    unknown = BLOB_UPLOAD_UNKNOWN(
        f"upload {upload_id!r} is not open in repository {name!r} "
        "(finished, cancelled or expired): start a new one with POST",
        detail={"uuid": upload_id},
    )
    if await reg.meta.upload_repository(upload_id) != name:
        raise unknown
    ingest = reg.ingests.get(upload_id)
    if ingest is not None and reg.config.database and not ingest.closed:
        info = await reg.store.ingest_info(upload_id)  # another replica appended since?
        if info is None or info.offset != ingest.offset or not ingest.parked:
            del reg.ingests[upload_id]
            ingest = None
    if ingest is not None and ingest.closed:
        # Its ingest failed (a full disk aborts it): the bytes it claimed are gone.
        await _drop_session(reg, upload_id)
        raise unknown
    if ingest is None:
        try:
            ingest = await reg.store.resume_ingest(upload_id)
            await _park(reg, upload_id, ingest)
        except IngestUnknown:
            await _drop_session(reg, upload_id)
            raise unknown from None
        reg.ingests[upload_id] = ingest
        reg.upload_limits.update(upload_id, ingest.offset)
    return ingest


async def _append(request: web.Request, name: str, upload_id: str, ingest: Any, *,
                  durable: bool = True) -> None:
    """Append the request body (a chunk or a stream) to the session, checking its range.

    The session is checkpointed when the body breaks off or has the wrong size (so the
    client can resume from what arrived) and, if ``durable``, also after a complete
    body. A PUT passes False: its commit follows at once and makes everything durable
    itself, and a checkpoint of a whole blob's pieces would cost as much again.
    """
    length = _content_length(request)
    span = parse_content_range(request.headers.get("Content-Range"))
    if span is not None:
        start, end = span
        if start != ingest.offset:
            raise RANGE_INVALID(
                f"chunk starts at byte {start} but the upload holds {ingest.offset} bytes: "
                f"send from byte {ingest.offset}",
                detail={"offset": ingest.offset},
                status=416,
                headers=_session_headers(name, upload_id, ingest.offset),
            )
        if length is not None and length != end - start + 1:
            raise RANGE_INVALID(
                f"Content-Range {start}-{end} is {end - start + 1} bytes but Content-Length "
                f"is {length}",
                headers=_session_headers(name, upload_id, ingest.offset),
            )
    reg = request.app[REGISTRY]
    allowance = reg.upload_limits.allowance(upload_id)
    expected = (span[1] - span[0] + 1) if span is not None else length
    if allowance is not None and expected is not None and expected > allowance:
        reg.upload_limits.refuse_bytes(upload_id, expected)

    def excess(wanted: int) -> None:
        reg.upload_limits.refuse_bytes(upload_id, wanted)

    before = ingest.offset
    try:
        await _pump(request, ingest, allowance, excess)
    except BaseException:
        await _keep_prefix(reg, upload_id, ingest)
        raise
    received = ingest.offset - before
    complete = expected is None or received == expected
    if durable or not complete:
        await _park(reg, upload_id, ingest)
    if not complete:
        raise BLOB_UPLOAD_INVALID(
            f"chunk was {received} bytes, expected {expected}; the upload holds "
            f"{ingest.offset} bytes: resume from there",
            detail={"offset": ingest.offset},
        )


async def _park(reg: Registry, upload_id: str, ingest: Any) -> None:
    """Checkpoint the session and let its ingest give back its buffers until the next
    request. If that fails (a full disk), the session cannot hold what it claims: it is
    aborted and forgotten, and the error propagates."""
    try:
        await ingest.park()
    except BaseException:
        with contextlib.suppress(Exception):
            await ingest.abort()
        await _drop_session(reg, upload_id)
        raise
    else:
        reg.upload_limits.update(upload_id, ingest.offset)
    finally:
        _release_memory(reg)


async def _keep_prefix(reg: Registry, upload_id: str, ingest: Any) -> None:
    # A body broke off or failed: whatever arrived is a valid prefix, kept durable so
    # the client can resume; a session that cannot keep it is forgotten.
    if ingest.closed:
        await _drop_session(reg, upload_id)
        return
    with contextlib.suppress(Exception):
        await _park(reg, upload_id, ingest)


async def patch_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    async with upload_slot(reg, request), reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        try:
            await _append(request, name, upload_id, ingest)
        except IngestOffsetMismatch as exc:
            raise RANGE_INVALID(str(exc), headers=_session_headers(name, upload_id, exc.expected)) from exc
        return web.Response(status=202, headers=_session_headers(name, upload_id, ingest.offset))


async def finish_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    digest_text = request.query.get("digest")
    if not digest_text:
        raise DIGEST_INVALID("closing an upload needs ?digest=<digest of the whole blob>")
    digest = parse_digest(digest_text)
    async with upload_slot(reg, request), reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        if request.body_exists or request.headers.get("Content-Range"):
            await _append(request, name, upload_id, ingest, durable=False)
        try:
            info = await ingest.commit(digest, link_own=holder(name))
        except (DigestMismatch, SizeMismatch) as exc:
            await _drop_session(reg, upload_id)
            raise _commit_error(exc, digest) from exc
        except BaseException:
            if ingest.closed:  # a failed commit aborted it (e.g. the disk is full)
                await _drop_session(reg, upload_id)
            raise
        finally:
            _release_memory(reg)
        await _drop_session(reg, upload_id)
    await commit_into(reg, name, info)
    await reg.meta.ensure_repository(name)
    return _created(name, digest)


async def _drop_session(reg: Registry, upload_id: str) -> None:
    reg.forget_upload(upload_id)
    _release_memory(reg)
    # On a full disk even this may fail: the session is then unknown to this process and
    # the next request finds its cas ingest gone (or at its last checkpoint).
    with contextlib.suppress(Exception):
        await reg.meta.remove_upload(upload_id)


async def upload_status(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    # Under the session's lock: the answer reflects the end of any chunk still arriving.
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        return web.Response(status=204, headers=_session_headers(name, upload_id, ingest.offset))


async def cancel_upload(request: web.Request, name: str, upload_id: str) -> web.Response:
    reg = request.app[REGISTRY]
    async with reg.upload_lock(upload_id):
        ingest = await _session(reg, name, upload_id)
        with contextlib.suppress(IngestUnknown):
            await ingest.abort()
        await _drop_session(reg, upload_id)
    return web.Response(status=204, headers={"Content-Length": "0"})
