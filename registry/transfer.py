"""Moving one blob between a registry and the local ``cas.Store``, verified and resumable.

Pull (:func:`pull_blob`): nothing is fetched for a blob the store has. Otherwise the
bytes go into a cas ingest that is remembered in ``images.db`` (``pulls``) and
checkpointed as it grows, so an interrupted pull - in this process (connection dropped)
or in a later one - continues from the checkpoint with a ``Range`` request.

- With pybuild's recipe extension the blob is planned piece by piece: pieces the store
  has (``has_pieces``) are copied locally (``read_piece``), missing pieces are fetched by
  Range (adjacent ones coalesced, each checked against its BLAKE3 key);
- otherwise large blobs are fetched as parallel Range parts when the server accepts
  ranges, small ones as one stream.

Parts are fetched concurrently but written in order. The ingest commits with the
expected digest and size: wrong bytes, a wrong length or a truncated body raise
:class:`BlobError` naming the blob, and nothing becomes visible.

Push (:func:`push_blob`): skipped when the destination has the blob (HEAD); mounted when
another repository of the same registry has it; else uploaded - monolithic (POST + PUT)
when small, else in PATCH chunks whose session URL is remembered (``pushes``) so that an
interrupted push resumes from the offset the registry reports.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import blake3

from cas import DigestMismatch, Ingest, IngestUnknown, SizeMismatch

from .client import RegistryClient, TransportError
from .errors import RegistryError
from .local import ImageStore
from .oci import Descriptor
from .progress import Progress
from .refs import ImageRef

__all__ = ["BlobError", "TransferOptions", "pull_blob", "push_blob"]


class BlobError(Exception):
    """A blob could not be transferred; the message names it and says what to do."""


@dataclass(frozen=True, slots=True)
class TransferOptions:
    part_size: int = 4 << 20  # one Range request (piece runs are cut at piece boundaries)
    parallel_threshold: int = 16 << 20  # whole-blob transfers above this use Range parts
    window: int = 4  # parts of one blob in flight
    checkpoint_every: int = 8 << 20
    upload_chunk: int = 16 << 20  # push: monolithic below, PATCH chunks of this size above
    retries: int = 3  # re-requests of a part whose body broke off
    recipes: bool = True


@dataclass(frozen=True, slots=True)
class _Part:
    start: int
    end: int  # exclusive
    local: bool = False
    keys: tuple[tuple[int, int, str], ...] = ()  # pieces inside, to verify (offset, len, key)


class _Sink:
    """Appends to the ingest in order, checkpoints, reports progress, refuses overruns."""

    def __init__(self, ing: Ingest, size: int, desc: Descriptor, progress: Progress, every: int) -> None:
        self.ing, self.size, self.desc, self.progress = ing, size, desc, progress
        self.every = every
        self.since = 0

    @property
    def offset(self) -> int:
        return self.ing.offset

    async def write(self, data: bytes, *, reused: bool = False) -> None:
        if self.ing.offset + len(data) > self.size:
            raise BlobError(
                f"blob {self.desc.digest}: the registry sent more than the {self.size} bytes "
                "the manifest declares; nothing was kept"
            )
        await self.ing.write(data)
        self.progress.advance(str(self.desc.digest), len(data), reused=reused)
        self.since += len(data)
        if self.since >= self.every:
            self.since = 0
            await self.ing.checkpoint()


async def pull_blob(
    client: RegistryClient,
    images: ImageStore,
    src: ImageRef,
    desc: Descriptor,
    progress: Progress,
    *,
    recipes: bool = False,
    link: str | None = None,
    options: TransferOptions = TransferOptions(),
) -> str:
    """Make ``desc``'s blob present in the store; returns "exists" or "pulled"."""
    store = images.store
    key = str(desc.digest)
    progress.start(key, f"{desc.digest.encoded[:12]}", desc.size)
    if await store.stat(desc.digest) is not None:
        if link:
            await store.link(link, desc.digest)
        progress.finish(key, "exists")
        return "exists"
    ing = await _open_ingest(images, desc)
    sink = _Sink(ing, desc.size, desc, progress, options.checkpoint_every)
    if ing.offset:
        progress.advance(key, ing.offset, reused=True)
    try:
        await _fill(client, images, src, desc, sink, recipes and options.recipes, options)
        if ing.offset < desc.size:
            raise BlobError(f"blob {desc.digest}: the body ended at byte {ing.offset} of {desc.size}")
        await ing.commit(desc.digest, size=desc.size, link=link)
    except (DigestMismatch, SizeMismatch) as exc:
        await images.set_pending_pull(desc.digest, None)
        progress.finish(key, "failed")
        raise BlobError(
            f"blob {desc.digest} from {src.repository} does not match its digest ({exc}); "
            "nothing was kept - the registry serves corrupt data, tell its operator"
        ) from exc
    except BlobError:
        await _drop(images, ing, desc)
        progress.finish(key, "failed")
        raise
    except BaseException as exc:
        # Keep what arrived for the next attempt (resume), unless the ingest is unusable.
        with contextlib.suppress(Exception):
            await asyncio.shield(ing.checkpoint())
        progress.finish(key, "interrupted")
        if isinstance(exc, (TransportError, RegistryError, aiohttp.ClientError, asyncio.TimeoutError)):
            raise BlobError(
                f"blob {desc.digest} from {src.repository}: {exc}; run the command again to "
                f"resume from byte {ing.offset}"
            ) from exc
        raise
    await images.set_pending_pull(desc.digest, None)
    progress.finish(key, "pulled")
    return "pulled"


async def _open_ingest(images: ImageStore, desc: Descriptor) -> Ingest:
    pending = await images.pending_pull(desc.digest)
    if pending is not None:
        with contextlib.suppress(IngestUnknown):
            ing = await images.store.resume_ingest(pending)
            if ing.offset <= desc.size:
                return ing
            await ing.abort()
    ing = await images.store.begin_ingest(algorithm=desc.digest.algorithm)
    await images.set_pending_pull(desc.digest, ing.id)
    return ing


async def _drop(images: ImageStore, ing: Ingest, desc: Descriptor) -> None:
    with contextlib.suppress(Exception):
        await ing.abort()
    await images.set_pending_pull(desc.digest, None)


async def _fill(
    client: RegistryClient, images: ImageStore, src: ImageRef, desc: Descriptor,
    sink: _Sink, recipes: bool, options: TransferOptions,
) -> None:
    host, name, digest = src.api_host, src.name, desc.digest
    start = sink.offset
    if start >= desc.size:
        return
    pieces = None
    if recipes:
        try:
            pieces = await client.recipe(host, name, digest)
        except (RegistryError, TransportError, ValueError, KeyError):
            pieces = None  # no recipe for this blob: fall back to whole-blob transfer
    if pieces is not None:
        have = await images.store.has_pieces(k for _, _, k in pieces)
        parts = _plan_pieces(pieces, have, start, options.part_size)
    else:
        remaining = desc.size - start
        ranges = False
        if start > 0 or remaining >= options.parallel_threshold:
            head = await client.head_blob(host, name, digest)
            ranges = bool(head and head[1])
        if start > 0 and not ranges:
            raise BlobError(f"blob {digest}: the registry does not accept Range; cannot resume")
        if remaining < options.parallel_threshold or not ranges:
            await _stream(client, src, desc, sink, start, None, options)
            return
        parts = [
            _Part(p, min(p + options.part_size, desc.size))
            for p in range(start, desc.size, options.part_size)
        ]
    await _run_parts(parts, sink, lambda part: _fetch_part(client, images, src, desc, part, options), options.window)


def _plan_pieces(
    pieces: list[tuple[int, int, str]], have: set[str], start: int, part_size: int
) -> list[_Part]:
    """Local pieces one part each; missing pieces coalesced into runs of <= part_size."""
    parts: list[_Part] = []
    run: list[tuple[int, int, str]] = []

    def flush() -> None:
        if run:
            lo = max(run[0][0], start)
            verify = tuple(p for p in run if p[0] >= start)
            parts.append(_Part(lo, run[-1][0] + run[-1][1], False, verify))
            run.clear()

    for piece in pieces:
        offset, length, key = piece
        if offset + length <= start:
            continue
        if key in have:
            flush()
            parts.append(_Part(max(offset, start), offset + length, True, (piece,)))
            continue
        if run and offset + length - max(run[0][0], start) > part_size:
            flush()
        run.append(piece)
    flush()
    return parts


async def _run_parts(
    parts: list[_Part], sink: _Sink, fetch: Callable[[_Part], Awaitable[bytes]], window: int
) -> None:
    """Fetch up to ``window`` parts ahead, write them strictly in order."""
    tasks: list[asyncio.Task[bytes]] = []
    try:
        nxt = 0
        for i, part in enumerate(parts):
            while nxt < len(parts) and nxt < i + window:
                tasks.append(asyncio.create_task(fetch(parts[nxt])))
                nxt += 1
            data = await tasks[i]
            tasks[i] = None  # type: ignore[call-overload]  # free the buffer early
            await sink.write(data, reused=part.local)
    finally:
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
        pending = [t for t in tasks if t is not None]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def _fetch_part(
    client: RegistryClient, images: ImageStore, src: ImageRef, desc: Descriptor,
    part: _Part, options: TransferOptions,
) -> bytes:
    if part.local:
        offset, _, key = part.keys[0]
        data = await images.store.read_piece(key)
        return data[part.start - offset :]
    data = await _get_range(client, src, desc, part.start, part.end, options)
    for offset, length, key in part.keys:
        piece = data[offset - part.start : offset - part.start + length]
        if blake3.blake3(piece).hexdigest() != key:
            raise BlobError(
                f"blob {desc.digest}: bytes {offset}-{offset + length - 1} do not match the "
                "recipe's piece key; the registry serves corrupt data, nothing was kept"
            )
    return data


async def _get_range(
    client: RegistryClient, src: ImageRef, desc: Descriptor, start: int, end: int,
    options: TransferOptions,
) -> bytes:
    buf = bytearray()
    for attempt in range(options.retries + 1):
        try:
            async with client.open_blob(src.api_host, src.name, desc.digest, start + len(buf), end - 1) as resp:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    buf += chunk
                    if len(buf) > end - start:
                        raise BlobError(f"blob {desc.digest}: the registry sent more bytes than asked for")
            if len(buf) == end - start:
                return bytes(buf)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            if attempt == options.retries:
                raise
        await asyncio.sleep(0.1 * 2**attempt)
    raise BlobError(f"blob {desc.digest}: bytes {start}-{end - 1} kept arriving short")


async def _stream(
    client: RegistryClient, src: ImageRef, desc: Descriptor, sink: _Sink, start: int,
    end: int | None, options: TransferOptions,
) -> None:
    """One GET, re-requested from where it broke off (a Range) when the body is cut."""
    for attempt in range(options.retries + 1):
        try:
            offset = sink.offset
            async with client.open_blob(src.api_host, src.name, desc.digest, offset) as resp:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    await sink.write(chunk)
            if sink.offset >= desc.size:
                return
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError):
            if attempt == options.retries:
                raise
        await sink.ing.checkpoint()
        await asyncio.sleep(0.1 * 2**attempt)


async def push_blob(
    client: RegistryClient,
    images: ImageStore,
    dst: ImageRef,
    desc: Descriptor,
    progress: Progress,
    *,
    mount_from: tuple[str, ...] = (),
    options: TransferOptions = TransferOptions(),
) -> str:
    """Make ``dst``'s repository hold the blob; returns "exists", "mounted" or "pushed"."""
    host, name, digest = dst.api_host, dst.name, desc.digest
    key = str(digest)
    progress.start(key, digest.encoded[:12], desc.size)
    if await client.head_blob(host, name, digest, push=True) is not None:
        progress.finish(key, "exists")
        return "exists"
    info = await images.store.stat(digest)
    if info is None:
        raise BlobError(f"blob {digest} is not in the local store; pull the image again")
    location = None
    for source in mount_from:
        if source != name:
            location = await client.start_upload(host, name, mount=digest, source=source)
            if location is None:
                progress.finish(key, "mounted")
                return "mounted"
            break
    session_key = f"{host}/{name}@{digest}"
    offset = 0
    pending = await images.pending_push(session_key)
    if pending is not None and info.size > options.upload_chunk:
        try:
            offset = await client.upload_offset(host, name, pending)
            location = pending  # resume the interrupted session
        except RegistryError:
            offset = 0  # expired or unknown: start over
    if location is None:
        location = await client.start_upload(host, name)
    assert location is not None
    if info.size <= options.upload_chunk:
        data = await images.store.read_bytes(digest)
        await client.finish_upload(host, name, location, digest, data)
        progress.advance(key, len(data))
    else:
        progress.advance(key, offset, reused=True)
        await images.set_pending_push(session_key, location)
        buf = bytearray()
        async for chunk in images.store.read(digest, offset):
            buf += chunk
            while len(buf) >= options.upload_chunk:
                piece = bytes(buf[: options.upload_chunk])
                del buf[: options.upload_chunk]
                location = await client.patch_upload(host, name, location, piece, offset)
                offset += len(piece)
                await images.set_pending_push(session_key, location)
                progress.advance(key, len(piece))
        if buf:
            location = await client.patch_upload(host, name, location, bytes(buf), offset)
            progress.advance(key, len(buf))
        await client.finish_upload(host, name, location, digest)
        await images.set_pending_push(session_key, None)
    progress.finish(key, "pushed")
    return "pushed"
