"""A blob pulled in parts: Range parts fetched ahead and written in order.

The parts are either the blob cut into ``part_size`` pieces (a large whole-blob pull), or
planned from the recipe extension's pieces: pieces the store has are copied locally (as
runs of a local blob where :func:`local_piece_sources` places them consecutively), runs of
missing pieces are fetched by Range and each piece checked against its BLAKE3 key on a
worker thread. A Range whose body breaks off is re-requested from where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import blake3

from cas import BlobUnknown, Digest

from ..oci import Descriptor
from .connections import WireError
from .image_store import ImageNotFound, ImageStore
from .pull_sink import _Sink
from .refs import ImageRef, InvalidReference, parse_image_ref
from .remote import RegistryClient
from .transfer import BlobError, TransferOptions, cancel_all

__all__ = ["PieceSources", "local_piece_sources"]

Chunks = list[bytes] | list[bytearray]


@dataclass(frozen=True, slots=True)
class _Part:
    start: int
    end: int  # exclusive
    local: bool = False
    keys: tuple[tuple[int, int, str], ...] = ()  # pieces inside, to verify (offset, len, key)
    # A local run: the same bytes sit at this offset of this local blob (one store read
    # instead of one lookup and one read per piece).
    source: tuple[Digest, int] | None = None


class _EvenParts(Sequence[_Part]):
    """``[start, end)`` in parts of ``size`` bytes, made as they are asked for: a blob's
    declared size comes from the manifest, and a hostile one (``2**62``) must not make a
    list of parts that fills the memory before the registry's first answer says no."""

    def __init__(self, start: int, end: int, size: int) -> None:
        self.start, self.end, self.size = start, end, size

    def __len__(self) -> int:
        return -(-(self.end - self.start) // self.size)

    def __getitem__(self, i: int) -> _Part:  # type: ignore[override]
        if not 0 <= i < len(self):
            raise IndexError(i)
        at = self.start + i * self.size
        return _Part(at, min(at + self.size, self.end))

    def __iter__(self) -> Iterator[_Part]:
        return (self[i] for i in range(len(self)))


class PieceSources(dict[str, tuple[Digest, int]]):
    """Piece key -> (local blob, offset in it); :attr:`recipes`: those blobs' pieces,
    ``(key, length)`` in order, as they were read (a committed blob's recipe never
    changes), so a blob that begins as one of them needs no second read of it."""

    def __init__(self) -> None:
        super().__init__()
        self.recipes: dict[Digest, list[tuple[str, int]]] = {}


async def local_piece_sources(images: ImageStore, src: ImageRef) -> PieceSources:
    """Where the layers of local images of ``src``'s repository hold each of their pieces.

    An update of an image mostly reuses its previous version's pieces in the same
    order: reading them as runs of the old layer costs one store read per run."""
    out = PieceSources()
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
                out.recipes[layer.digest] = [(p.key, p.length) for p in recipe.pieces]
    return out


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
    parts: Sequence[_Part], sink: _Sink, fetch: Callable[[_Part], Coroutine[Any, Any, Chunks]],
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
        await cancel_all(list(tasks.values()))


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


def wrong_size(desc: Descriptor, size: int) -> str:
    """The error of a blob the registry holds ``size`` bytes of, not the declared size."""
    return (f"blob {desc.digest}: the registry holds {size} bytes of it, the manifest "
            f"declares {desc.size}; nothing was kept - the manifest does not describe the "
            "registry's blob, tell the image's publisher")


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
                total = str(resp.headers.get("Content-Range", "")).rpartition("/")[2]
                if total.isdigit() and int(total) != desc.size:
                    raise BlobError(wrong_size(desc, int(total)))
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

