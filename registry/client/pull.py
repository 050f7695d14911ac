"""Pulling one blob from a registry into the local ``cas.Store``, verified and resumable.

Nothing is fetched for a blob the store has. Otherwise the bytes go straight from the
HTTP response into a cas ingest (which computes the OCI digest and the piece keys on its
worker threads: the client hashes nothing itself and copies no body bytes). The ingest is
checkpointed at most every ``checkpoint_every`` bytes *and* ``checkpoint_interval``
seconds (each checkpoint costs an ``fsync``; a pull that takes a second costs none), and
always when a transfer breaks off. Its id is remembered in ``images.db`` (``pulls``) from
its first checkpoint, so an interrupted pull - in this process (connection dropped) or in
a later one - continues from the checkpoint with a ``Range`` request.

- With pybuild's recipe extension, when the store already holds some of the blob's
  pieces, the blob is planned piece by piece: pieces the store has (``has_pieces``) are
  copied locally (``read_piece``), runs of missing pieces are fetched by Range (adjacent
  ones coalesced up to ``part_size``, ``window`` runs in flight, each piece checked
  against its BLAKE3 key on a worker thread);
- otherwise (no recipe, or none of its pieces local) the blob is one streamed GET, or,
  from ``parallel_threshold`` bytes up and when the server accepts ranges, ``window``
  parallel Range parts of ``part_size``.

Parts are fetched concurrently but written in order. The ingest commits with the
expected digest and size: wrong bytes, a wrong length or a truncated body raise
:class:`BlobError` naming the blob, and nothing becomes visible.

Pushing is :mod:`registry.client.push`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import blake3

from cas import (
    BlobUnknown,
    Digest,
    DigestMismatch,
    Ingest,
    IngestUnknown,
    SizeMismatch,
    SourceFailed,
)

from ..errors import RegistryError
from ..oci import Descriptor
from .connections import WireError, WireResponse
from .errors import ClientError
from .image_store import ImageNotFound, ImageStore
from .progress import Progress
from .refs import ImageRef, InvalidReference, parse_image_ref
from .remote import RegistryClient, TransportError

__all__ = ["BlobError", "PieceSources", "TransferOptions", "local_piece_sources", "pull_blob"]

Chunks = list[bytes] | list[bytearray]
# A streamed body goes into the ingest in slices of this many bytes (progress is
# reported, and a checkpoint may be made, between two slices).
_SLICE = 8 << 20


class BlobError(ClientError):
    """A blob could not be transferred; the message names it and says what to do."""


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How blobs move. The defaults were chosen with ``python3 -m bench client``."""

    part_size: int = 4 << 20  # one Range request (piece runs are cut at piece boundaries)
    # Whole-blob pulls at least this large use parallel Range parts; below, one stream
    # per blob (several blobs already transfer at once, see CopyOptions.jobs).
    parallel_threshold: int = 64 << 20
    window: int = 8  # Range requests of one blob in flight (parts or missing-piece runs)
    checkpoint_every: int = 32 << 20  # pull: bytes between checkpoints, at least ...
    checkpoint_interval: float = 2.0  # ... and seconds between them
    upload_chunk: int = 16 << 20  # push: one PUT below, PATCH chunks of this size above
    retries: int = 3  # re-requests of a part whose body broke off
    recipes: bool = True

    def __post_init__(self) -> None:
        if self.window < 1 or self.part_size < 1 or self.upload_chunk < 1:
            raise ValueError("window, part_size and upload_chunk must be at least 1")


@dataclass(frozen=True, slots=True)
class _Part:
    start: int
    end: int  # exclusive
    local: bool = False
    keys: tuple[tuple[int, int, str], ...] = ()  # pieces inside, to verify (offset, len, key)
    # A local run: the same bytes sit at this offset of this local blob (one store read
    # instead of one lookup and one read per piece).
    source: tuple[Digest, int] | None = None


PieceSources = dict[str, tuple[Digest, int]]  # piece key -> (local blob, offset in it)


async def local_piece_sources(images: ImageStore, src: ImageRef) -> PieceSources:
    """Where the layers of local images of ``src``'s repository hold each of their pieces.

    An update of an image mostly reuses its previous version's pieces in the same
    order: reading them as runs of the old layer costs one store read per run."""
    out: PieceSources = {}
    for image in await images.list():
        try:
            ref = parse_image_ref(image.ref)
        except InvalidReference:
            continue
        if (ref.api_host, ref.name) != (src.api_host, src.name):
            continue
        try:
            manifest, _ = await images.get(image.ref)
        except (ImageNotFound, ValueError, KeyError):
            continue  # an index without a matching platform, a damaged record: skip it
        for layer in manifest.layers:
            with contextlib.suppress(BlobUnknown):
                recipe = await images.store.recipe(layer.digest)
                for piece in recipe.pieces:
                    out.setdefault(piece.key, (layer.digest, piece.offset))
    return out


class _Sink:
    """Appends to the ingest in order, checkpoints, reports progress, refuses overruns."""

    def __init__(self, images: ImageStore, ing: Ingest, desc: Descriptor, progress: Progress,
                 options: TransferOptions, recorded: bool) -> None:
        self.images, self.ing, self.desc, self.progress = images, ing, desc, progress
        self.size = desc.size
        self.key = str(desc.digest)
        self.every, self.interval = options.checkpoint_every, options.checkpoint_interval
        self.since = 0
        self.last = time.monotonic()
        self.recorded = recorded  # images.db names this ingest (pending pull)

    @property
    def offset(self) -> int:
        return self.ing.offset

    async def write(self, data: bytes | bytearray, *, reused: bool = False) -> None:
        if self.ing.offset + len(data) > self.size:
            raise BlobError(
                f"blob {self.desc.digest}: the registry sent more than the {self.size} bytes "
                "the manifest declares; nothing was kept"
            )
        await self.ing.write(data)
        self.progress.advance(self.key, len(data), reused=reused)
        self.since += len(data)
        if self.since >= self.every and time.monotonic() - self.last >= self.interval:
            await self.checkpoint()

    async def receive(self, resp: WireResponse) -> None:
        """Read ``resp``'s body into the ingest on a worker thread (:meth:`Ingest.receive`),
        up to the blob's end. A body longer than the rest of the blob is refused."""
        if resp.length is not None and self.ing.offset + resp.length > self.size:
            raise BlobError(
                f"blob {self.desc.digest}: the registry sends {resp.length} bytes from byte "
                f"{self.ing.offset} of a blob the manifest declares {self.size} bytes long; "
                "nothing was kept"
            )
        while self.ing.offset < self.size:
            before = self.ing.offset
            try:
                await self.ing.receive(resp.readinto, min(_SLICE, self.size - before),
                                       interrupt=resp.abort)
            finally:
                got = self.ing.offset - before
                self.progress.advance(self.key, got)
                self.since += got
            if not got:
                return  # the body ended (early, if the blob is not complete)
            if self.since >= self.every and time.monotonic() - self.last >= self.interval:
                await self.checkpoint()
        if await resp.run(resp.readinto, memoryview(bytearray(1))):
            raise BlobError(
                f"blob {self.desc.digest}: the registry sent more than the {self.size} bytes "
                "the manifest declares; nothing was kept"
            )

    async def checkpoint(self) -> None:
        """Make what arrived durable and resumable (also by a later process)."""
        self.since = 0
        self.last = time.monotonic()
        await self.ing.checkpoint()
        if not self.recorded:
            await self.images.set_pending_pull(self.desc.digest, self.ing.id)
            self.recorded = True


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
    sources: PieceSources | None = None,
) -> str:
    """Make ``desc``'s blob present in the store; returns "exists" or "pulled".

    ``sources`` (see :func:`local_piece_sources`) lets local pieces be read in runs."""
    store = images.store
    key = str(desc.digest)
    progress.start(key, f"{desc.digest.encoded[:12]}", desc.size)
    if await store.stat(desc.digest) is not None:
        if link:
            await store.link(link, desc.digest)
        progress.finish(key, "exists")
        return "exists"
    ing, resumed = await _open_ingest(images, desc)
    sink = _Sink(images, ing, desc, progress, options, recorded=resumed)
    if ing.offset:
        progress.advance(key, ing.offset, reused=True)
    try:
        await _fill(client, images, src, desc, sink, recipes and options.recipes, options,
                    sources or {})
        if ing.offset < desc.size:
            raise BlobError(f"blob {desc.digest}: the body ended at byte {ing.offset} of {desc.size}")
        await ing.commit(desc.digest, size=desc.size, link=link)
    except (DigestMismatch, SizeMismatch) as exc:
        if sink.recorded:
            await images.set_pending_pull(desc.digest, None)
        progress.finish(key, "failed")
        raise BlobError(
            f"blob {desc.digest} from {src.repository} does not match its digest ({exc}); "
            "nothing was kept - the registry serves corrupt data, tell its operator"
        ) from exc
    except BlobError:
        await _drop(images, sink)
        progress.finish(key, "failed")
        raise
    except BaseException as exc:
        # Keep what arrived for the next attempt (resume), unless the ingest is unusable.
        with contextlib.suppress(Exception):
            await asyncio.shield(sink.checkpoint())
        progress.finish(key, "interrupted")
        if isinstance(exc, (TransportError, RegistryError, WireError, asyncio.TimeoutError,
                            SourceFailed)):
            raise BlobError(
                f"blob {desc.digest} from {src.repository}: {exc}; run the command again to "
                f"resume from byte {ing.offset}"
            ) from exc
        raise
    if sink.recorded:
        await images.set_pending_pull(desc.digest, None)
    progress.finish(key, "pulled")
    return "pulled"


async def _open_ingest(images: ImageStore, desc: Descriptor) -> tuple[Ingest, bool]:
    """The interrupted ingest of an earlier pull of this blob (True), or a new one."""
    pending = await images.pending_pull(desc.digest)
    if pending is not None:
        with contextlib.suppress(IngestUnknown):
            ing = await images.store.resume_ingest(pending)
            if ing.offset <= desc.size:
                return ing, True
            await ing.abort()
        await images.set_pending_pull(desc.digest, None)
    # Not recorded in images.db yet: an ingest that never reached a checkpoint holds
    # nothing worth resuming (cas expires it).
    return await images.store.begin_ingest(algorithm=desc.digest.algorithm), False


async def _drop(images: ImageStore, sink: _Sink) -> None:
    with contextlib.suppress(Exception):
        await sink.ing.abort()
    if sink.recorded:
        await images.set_pending_pull(sink.desc.digest, None)


async def _fill(
    client: RegistryClient, images: ImageStore, src: ImageRef, desc: Descriptor,
    sink: _Sink, recipes: bool, options: TransferOptions, sources: PieceSources,
) -> None:
    host, name, digest = src.api_host, src.name, desc.digest
    start = sink.offset
    if start >= desc.size:
        return
    parts = None
    if recipes:
        try:
            pieces = await client.recipe(host, name, digest)
        except (RegistryError, TransportError, ValueError, KeyError):
            pieces = None  # no recipe for this blob: fall back to whole-blob transfer
        if pieces is not None:
            have = await images.store.has_pieces(k for _, _, k in pieces)
            if have:  # with nothing local, one stream beats many small Range requests
                parts = _plan_pieces(pieces, have, start, options.part_size, sources)
    if parts is None:
        remaining = desc.size - start
        ranges = False
        if start > 0 or remaining >= options.parallel_threshold:
            head = await client.head_blob(host, name, digest)
            ranges = bool(head and head[1])
        if start > 0 and not ranges:
            raise BlobError(f"blob {digest}: the registry does not accept Range; cannot resume")
        if remaining < options.parallel_threshold or not ranges:
            await _stream(client, src, desc, sink, options)
            return
        parts = [
            _Part(p, min(p + options.part_size, desc.size))
            for p in range(start, desc.size, options.part_size)
        ]
    await _run_parts(parts, sink, lambda part: _fetch_part(client, images, src, desc, part, options),
                     lambda part: _stream_local_run(images, sink, part),
                     options.window, options.window * options.part_size)


def _plan_pieces(
    pieces: list[tuple[int, int, str]], have: set[str], start: int, part_size: int,
    sources: PieceSources,
) -> list[_Part]:
    """Missing pieces coalesced into runs of <= part_size (one Range request each); local
    pieces one part each, or, where ``sources`` places consecutive ones consecutively in
    one local blob, one run (of any length) streamed from that blob."""
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
            lo = max(offset, start)
            found = sources.get(key)
            source = None if found is None else (found[0], found[1] + lo - offset)
            prev = parts[-1] if parts else None
            if (source is not None and prev is not None and prev.source is not None
                    and prev.source[0] == source[0]
                    and prev.source[1] + (prev.end - prev.start) == source[1]):
                parts[-1] = _Part(prev.start, offset + length, True, (*prev.keys, piece), prev.source)
            else:
                parts.append(_Part(lo, offset + length, True, (piece,), source))
            continue
        if run and offset + length - max(run[0][0], start) > part_size:
            flush()
        run.append(piece)
    flush()
    return parts


async def _run_parts(
    parts: list[_Part], sink: _Sink, fetch: Callable[[_Part], Coroutine[Any, Any, Chunks]],
    stream: Callable[[_Part], Awaitable[bool]], window: int, local_bytes: int,
) -> None:
    """Write ``parts`` strictly in order while fetching ahead: up to ``window`` remote
    parts (Range requests) and single local pieces up to ``local_bytes`` in flight. Runs
    of a local blob (``source``) are not fetched ahead but streamed into the sink when
    their turn comes (``stream``; False: the blob is gone, fetch piece by piece), while
    the Range requests after them are already under way."""
    tasks: dict[int, asyncio.Task[Chunks]] = {}
    remote = local = 0  # remote parts / local bytes started and not yet written
    nxt = 0
    try:
        for i, part in enumerate(parts):
            while nxt < len(parts):
                ahead = parts[nxt]
                size = ahead.end - ahead.start
                if ahead.source is not None:
                    nxt += 1
                    continue
                if (local and local + size > local_bytes) if ahead.local else (remote >= window):
                    break
                tasks[nxt] = asyncio.create_task(fetch(ahead))
                if ahead.local:
                    local += size
                else:
                    remote += 1
                nxt += 1
            if part.source is not None:
                if await stream(part):
                    continue
                chunks = await fetch(part)
            else:
                chunks = await tasks.pop(i)  # dropping the task frees its buffers early
                if part.local:
                    local -= part.end - part.start
                else:
                    remote -= 1
            for chunk in chunks:
                await sink.write(chunk, reused=part.local)
    finally:
        for task in tasks.values():
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks.values(), return_exceptions=True)


async def _stream_local_run(images: ImageStore, sink: _Sink, part: _Part) -> bool:
    """Copy a local run from its source blob into the sink; False if that blob is gone."""
    assert part.source is not None
    blob, at = part.source
    written = 0
    try:
        async for chunk in images.store.read(blob, at, part.end - part.start):
            await sink.write(chunk, reused=True)
            written += len(chunk)
    except BlobUnknown:
        if written:
            raise BlobError(
                f"blob {sink.desc.digest}: local blob {blob}, which holds some of its pieces, "
                "was removed during the pull; run the command again (it resumes)"
            ) from None
        return False
    return True


async def _fetch_part(
    client: RegistryClient, images: ImageStore, src: ImageRef, desc: Descriptor,
    part: _Part, options: TransferOptions,
) -> Chunks:
    if part.local:
        out = []
        for offset, _, key in part.keys:
            data = await images.store.read_piece(key)
            out.append(data[part.start - offset :] if part.start > offset else data)
        return out
    chunks = await _get_range(client, src, desc, part.start, part.end, options)
    if part.keys and not await asyncio.to_thread(_pieces_match, chunks, part):
        raise BlobError(
            f"blob {desc.digest}: bytes {part.start}-{part.end - 1} do not match the "
            "recipe's piece keys; the registry serves corrupt data, nothing was kept"
        )
    return chunks


def _pieces_match(chunks: Chunks, part: _Part) -> bool:
    """Whether every piece of ``part`` inside ``chunks`` (its bytes, in order) has its key.

    Hashes slices of the received chunks: the part is never joined into one buffer."""
    views = [memoryview(c) for c in chunks]
    ci, cpos = 0, part.start  # chunk index and the blob offset it starts at
    for offset, length, key in part.keys:
        while ci < len(views) and cpos + len(views[ci]) <= offset:
            cpos += len(views[ci])
            ci += 1
        hasher = blake3.blake3()
        pos, end, j, jpos = offset, offset + length, ci, cpos
        while pos < end and j < len(views):
            view = views[j]
            take = view[pos - jpos : min(end - jpos, len(view))]
            hasher.update(take)
            pos += len(take)
            if pos - jpos >= len(view):
                jpos += len(view)
                j += 1
        if pos != end or hasher.hexdigest() != key:
            return False
    return True


async def _get_range(
    client: RegistryClient, src: ImageRef, desc: Descriptor, start: int, end: int,
    options: TransferOptions,
) -> Chunks:
    """Bytes ``[start, end)``, read by a worker thread into one buffer, re-requesting
    what is missing when the body breaks off."""
    buf = bytearray(end - start)
    view = memoryview(buf)
    got = 0
    for attempt in range(options.retries + 1):
        failure: WireError | None = None
        try:
            async with client.open_blob(src.api_host, src.name, desc.digest, start + got, end - 1) as resp:
                if resp.length is not None and resp.length > end - start - got:
                    raise BlobError(f"blob {desc.digest}: the registry sent more bytes than asked for")
                n, failure = await resp.run(resp.fill, view[got:])
                got += n
                if got == end - start and failure is None and await resp.run(
                        resp.fill, memoryview(bytearray(1))) != (0, None):
                    raise BlobError(f"blob {desc.digest}: the registry sent more bytes than asked for")
            if got == end - start:
                return [buf]
            if failure is not None:
                raise failure
        except (TimeoutError, WireError):
            if attempt == options.retries:
                raise
        await asyncio.sleep(0.1 * 2**attempt)
    raise BlobError(f"blob {desc.digest}: bytes {start}-{end - 1} kept arriving short")


async def _stream(
    client: RegistryClient, src: ImageRef, desc: Descriptor, sink: _Sink, options: TransferOptions,
) -> None:
    """One GET from the sink's offset, re-requested from where it broke off (a Range)
    when the body is cut. The body is read on a worker thread straight into the ingest
    (:meth:`_Sink.receive`)."""
    for attempt in range(options.retries + 1):
        try:
            async with client.open_blob(src.api_host, src.name, desc.digest, sink.offset) as resp:
                await sink.receive(resp)
            if sink.offset >= desc.size:
                return
        except (TimeoutError, SourceFailed, WireError):
            if attempt == options.retries:
                raise
        await sink.checkpoint()
        await asyncio.sleep(0.1 * 2**attempt)
