"""Pushing one blob to a registry, resumable at any size: from the local ``cas.Store``, or
streamed from another source (an OCI layout's file, another registry) by ``pybuild copy``.

:func:`push_blob` skips a blob the destination has (HEAD), mounts it when another
repository of the same registry has it, and otherwise uploads it into an upload session
whose URL is remembered in ``images.db`` (``pushes``, keyed ``host/name@digest``) before
the first byte is sent:

- a blob of at most ``upload_chunk`` bytes goes in one ``PUT ?digest=`` (POST + PUT, the
  spec's monolithic-after-POST form), a larger one in ``PATCH`` chunks of
  ``upload_chunk`` (or the registry's ``OCI-Chunk-Min-Length``, when larger) and a
  closing ``PUT``;
- a request whose connection breaks is never re-sent blindly (the registry may have kept
  part of its body, and re-sending from the old offset would be refused or, for a PUT,
  stored twice): the client asks the session how many bytes it holds (``GET`` upload
  status, ``Range``) and sends the rest with ``PATCH`` from there, up to ``retries``
  times. A session the registry no longer knows is replaced by a new one from byte 0 -
  re-sending a content-addressed blob is idempotent;
- when every retry fails the session stays remembered, and the next push of the blob (in
  any later process) asks it for its offset and continues from there, without a POST;
- if the registry refuses a continued session (a wrong offset, or a digest that does not
  match what the session holds), the blob is sent once more, from byte 0, into a new
  session.

pybuild's registry keeps the received prefix of a broken request (it checkpoints the
session whatever happens), so a push cut half-way resumes half-way; a registry that drops
the partial request resumes from the last complete chunk.

A streamed blob (``source``) is read again from the session's offset when a request is
retried (a Range request to a source registry). Its bytes are hashed as they are sent:
when they do not match the digest the closing ``PUT`` is not sent (the session is
forgotten), and the error names the blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Sequence

from cas import Digest

from ..errors import RegistryError
from ..oci import Descriptor
from .connections import WireError
from .image_store import ImageStore
from .progress import Progress
from .pull import BlobError, TransferOptions
from .push_pieces import push_pieces
from .refs import ImageRef
from .remote import RegistryClient, TransportError

__all__ = ["PIECE_PUSH_MIN", "push_blob"]

# Blobs smaller than this go as one ordinary upload even where pieces could be reused:
# the piece protocol's extra requests cost more than they save.
PIECE_PUSH_MIN = 1 << 20
PIECE_PUSH_MAX = 64 << 30  # what pybuild's registry assembles from one plan

_DEFAULTS = TransferOptions()
_BROKEN = (TransportError, asyncio.TimeoutError, WireError)

# The blob's bytes from an offset, for a push that does not read the local store.
ChunkSource = Callable[[int], AsyncIterator[bytes | memoryview]]


class _Session:
    """Where one upload stands: its URL (which may change with every answer) and offset."""

    def __init__(self, location: str, offset: int) -> None:
        self.location = location
        self.offset = offset


async def push_blob(
    client: RegistryClient,
    images: ImageStore,
    dst: ImageRef,
    desc: Descriptor,
    progress: Progress,
    *,
    mount_from: tuple[str, ...] = (),
    options: TransferOptions = _DEFAULTS,
    source: ChunkSource | None = None,
    bases: Sequence[Digest] = (),
    absent: bool = False,
    uploads: asyncio.Semaphore | None = None,
) -> str:
    """Make ``dst``'s repository hold the blob; returns "exists", "mounted" or "pushed".
    ``absent``: the caller has just asked the registry (``HEAD``) and it lacks the blob,
    so it is not asked again (a round trip per blob). ``uploads``: held while bytes
    are sent (the whole of an ordinary upload; a piece-level push's pieces only, not its
    plan nor its commit).

    The bytes come from the local store, or from ``source`` (``desc.size`` of them,
    checked against the digest as they are sent). With ``bases`` (blobs of ``dst``'s
    repository that may share pieces with this one, see :func:`piece_bases`) a blob in
    the local store goes piece by piece to a registry that offers it
    (:mod:`registry.client.push_pieces`): only the pieces it lacks are sent."""
    host, name, digest = dst.api_host, dst.name, desc.digest
    key = str(digest)
    progress.start(key, digest.encoded[:12], desc.size)
    await images.forget_dead_transfers()
    if not absent and await client.head_blob(host, name, digest, push=True) is not None:
        progress.finish(key, "exists")
        return "exists"
    if source is None:
        info = await images.store.stat(digest)
        if info is None:
            raise BlobError(f"blob {digest} is not in the local store; pull the image again")
        size = info.size
        read: ChunkSource = lambda offset: images.store.read(digest, offset)  # noqa: E731
    else:
        size, read = desc.size, source
    location = None
    for other in mount_from:
        if other != name:
            location = await client.start_upload(host, name, mount=digest, source=other)
            if location is None:
                progress.finish(key, "mounted")
                return "mounted"
            break
    if (location is None and source is None and bases and PIECE_PUSH_MIN <= size <= PIECE_PUSH_MAX
            and options.recipes and await client.has_piece_push(host, name)):
        try:
            status = await push_pieces(client, images, dst, desc, progress, bases, options,
                                       uploads=uploads)
        except BaseException as exc:
            progress.fail(key, exc)
            raise
        if status is not None:
            progress.finish(key, status)
            return status
    async with uploads if uploads is not None else contextlib.nullcontext():
        return await _push_whole(client, images, dst, digest, size, read, location, progress,
                                 options, verify=source is not None)


async def _push_whole(
    client: RegistryClient, images: ImageStore, dst: ImageRef, digest: Digest, size: int,
    read: ChunkSource, location: str | None, progress: Progress, options: TransferOptions,
    *, verify: bool,
) -> str:
    """An ordinary upload of the blob (resumed where a session was left), as
    :func:`push_blob` describes."""
    host, name = dst.api_host, dst.name
    key = str(digest)
    session_key = f"{host}/{name}@{digest}"
    session = None
    resumed = False  # the session holds bytes this run did not send
    pending = await images.pending_push(session_key)
    if pending is not None:
        try:
            session = _Session(pending, await client.upload_offset(host, name, pending))
            resumed = True
        except (RegistryError, *_BROKEN):
            session = None  # expired or unknown: start over
    if session is None:
        session = _Session(location or await _start(client, host, name), 0)
        await images.set_pending_push(session_key, session.location)
    progress.advance(key, session.offset, reused=True)
    attempt = 0
    restarted = False
    while True:
        try:
            await _send(client, images, host, name, digest, size, session, session_key,
                        progress, options, read, verify=verify)
            break
        except BlobError as exc:
            # The source is wrong (not the transfer): nothing to resume.
            await images.set_pending_push(session_key, None)
            progress.fail(key, exc)
            raise
        except (RegistryError, *_BROKEN) as exc:
            refused = isinstance(exc, RegistryError) and exc.status < 500
            # Another process pushing the blob from this storage at the same time took
            # this session up from images.db as one to resume, and wrote to it or closed
            # it: the registry finds the offset wrong (416) or the session gone (404).
            taken = isinstance(exc, RegistryError) and exc.status in (404, 416) and not restarted
            if (refused and resumed) or taken:
                # What the session held does not fit (a wrong offset, or bytes that do not
                # make the digest): once, start over from byte 0 in a new session.
                resumed, restarted = False, True
                session = _Session(await _start(client, host, name), 0)
                await images.set_pending_push(session_key, session.location)
                continue
            if attempt == options.retries or refused:
                progress.fail(key, exc)
                raise
        await asyncio.sleep(0.1 * 2**attempt)
        attempt += 1
        before = session.offset
        try:
            session.offset = await client.upload_offset(host, name, session.location)
            resumed = resumed or session.offset > 0
        except RegistryError:  # the registry dropped the session with the broken request
            session = _Session(await _start(client, host, name), 0)
            await images.set_pending_push(session_key, session.location)
        if session.offset > before:
            progress.advance(key, session.offset - before)
    await images.set_pending_push(session_key, None)
    progress.finish(key, "pushed")
    return "pushed"


async def _start(client: RegistryClient, host: str, name: str) -> str:
    location = await client.start_upload(host, name)
    assert location is not None  # no mount was asked for
    return location


async def _send(
    client: RegistryClient, images: ImageStore, host: str, name: str, digest: Digest,
    size: int, session: _Session, session_key: str, progress: Progress, options: TransferOptions,
    read: ChunkSource, *, verify: bool,
) -> None:
    """Send the blob from ``session.offset`` and close the session with its digest.

    ``verify``: hash what is sent and close the session only if it makes the digest (a
    session resumed past byte 0 is left to the registry's own check)."""
    key = str(digest)
    hasher = hashlib.new(digest.algorithm) if verify and session.offset == 0 else None

    async def check(data: bytes | memoryview) -> None:
        if hasher is not None:
            await asyncio.to_thread(hasher.update, data)

    def checked() -> None:
        if hasher is not None and hasher.hexdigest() != digest.encoded:
            raise BlobError(f"blob {digest}: the source's bytes do not match its digest "
                            f"(sha {hasher.hexdigest()[:12]}...); nothing was pushed")

    if session.offset == 0 and size <= options.upload_chunk:
        data = b"".join([chunk async for chunk in read(0)])
        if len(data) != size:
            raise BlobError(f"blob {digest}: the source has {len(data)} of its {size} bytes")
        await check(data)
        checked()
        await client.finish_upload(host, name, session.location, digest, data)
        session.offset = len(data)
        progress.advance(key, len(data))
        return
    async for piece in _chunks(read(session.offset), client.upload_chunk(host, options.upload_chunk)):
        if session.offset + len(piece) > size:
            raise BlobError(f"blob {digest}: the source has more than its {size} bytes")
        await check(piece)
        session.location = await client.patch_upload(host, name, session.location, piece,
                                                     session.offset)
        session.offset += len(piece)
        progress.advance(key, len(piece))
        if session.offset < size:
            await images.set_pending_push(session_key, session.location)
    if session.offset != size:
        raise BlobError(f"blob {digest}: the source ended at byte {session.offset} of {size}")
    checked()
    await client.finish_upload(host, name, session.location, digest)


async def _chunks(chunks: AsyncIterator[bytes | memoryview], size: int) -> AsyncIterator[bytes]:
    """``chunks`` regrouped in pieces of ``size`` bytes (the last one shorter)."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)
