"""A blob pulled by its recipe and committed from it: nothing the store holds is re-cut.

When the registry gives the blob's recipe (pybuild's piece index) and the local store
holds some of its pieces, the blob is assembled in a :mod:`cas` ingest from whole pieces
(``Ingest.reuse_pieces``/``append_pieces``): runs of pieces the store holds are only
held and read for the digest, runs of missing pieces are fetched by Range (``window`` in
flight, each piece checked against its BLAKE3 key) and stored as the pieces they are.
The store computes the blob's digest over every byte, in order, on its worker threads
while the next Range requests are under way, and the commit verifies it: a recipe that
lies (pieces of other content, a wrong length) fails the commit, never commits wrong
bytes. A held piece that vanished meanwhile (a concurrent GC) is fetched instead.

When the blob begins as a local layer does (the previous version of a layer changed in
its middle: ``sources`` places its first piece at the start of that layer, whose recipe
then says for how many bytes), the digest starts from the SHA-256 state the store kept
for that layer (``Ingest.hash_from``, :mod:`cas.digest_states`): those held pieces are
not even read. The commit still checks the whole digest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cas import BlobUnknown, Digest, PieceMissing, Store

from ..oci import Descriptor
from .image_store import ImageStore
from .pull_parts import PieceSources, _fetch_part, _Part
from .pull_sink import _Sink
from .refs import ImageRef
from .remote import RegistryClient
from .transfer import TransferOptions, cancel_all

__all__: list[str] = []

# Pieces the store holds, handed to it at once (one metadata transaction each call).
_LOCAL_RUN = 2048


def plan_assembly(pieces: list[tuple[int, int, str]], size: int, have: set[str],
                  part_size: int) -> list[_Part] | None:
    """Runs of held pieces (up to _LOCAL_RUN) and runs of missing ones (one Range request
    each, up to ``part_size``, a longer piece alone), in blob order; None when the pieces
    do not cover ``size`` bytes end to end (then the blob is pulled as bytes)."""
    parts: list[_Part] = []
    run: list[tuple[int, int, str]] = []
    run_local = False
    pos = 0
    for piece in pieces:
        offset, length, key = piece
        if offset != pos or length <= 0:
            return None
        pos += length
        local = key in have
        if run and (local != run_local or (local and len(run) >= _LOCAL_RUN)
                    or (not local and offset + length - run[0][0] > part_size)):
            parts.append(_Part(run[0][0], offset, run_local, tuple(run)))
            run = []
        run.append(piece)
        run_local = local
    if pos != size:
        return None
    if run:
        parts.append(_Part(run[0][0], pos, run_local, tuple(run)))
    return parts


async def assemble(client: RegistryClient, images: ImageStore, src: ImageRef,
                   desc: Descriptor, sink: _Sink, parts: list[_Part],
                   options: TransferOptions, fetched: Callable[[], None] | None = None,
                   sources: PieceSources | None = None) -> None:
    """Feed ``parts`` to the sink's (fresh) ingest in order, as whole pieces, with up to
    ``options.window`` Range requests ahead. ``fetched`` is called once every missing
    piece has arrived: what remains (holding and hashing local pieces) needs no network.
    ``sources`` (where local layers hold pieces) finds the layer the blob begins as."""
    ing = sink.ing
    sources = sources or PieceSources()
    base = await _common_start(images.store, sources, parts)
    if base is not None:
        await ing.hash_from(*base)
    tasks: dict[int, asyncio.Task[list[bytes] | list[bytearray]]] = {}
    remote_left = sum(not part.local for part in parts)
    if fetched is not None and not remote_left:
        fetched()

    def remote(part: _Part) -> _Part:
        return _Part(part.start, part.end, False, part.keys)

    nxt = 0
    try:
        for i, part in enumerate(parts):
            while nxt < len(parts) and len(tasks) < options.window:
                if not parts[nxt].local:
                    tasks[nxt] = asyncio.create_task(
                        _fetch_part(client, images, src, desc, parts[nxt], options))
                nxt += 1
            size = part.end - part.start
            if part.local:
                try:
                    await ing.reuse_pieces([(key, length) for _, length, key in part.keys],
                                           _within(sources, part))
                    sink.progress.advance(sink.key, size, reused=True)
                    continue
                except PieceMissing:
                    chunks = await _fetch_part(client, images, src, desc, remote(part), options)
            else:
                chunks = await tasks.pop(i)
                remote_left -= 1
                if fetched is not None and not remote_left:
                    fetched()
            await ing.append_pieces(_split(chunks, part))
            sink.progress.advance(sink.key, size)
    finally:
        await cancel_all(list(tasks.values()))


async def _common_start(store: Store, sources: PieceSources,
                        parts: list[_Part]) -> tuple[Digest, int] | None:
    """The local blob whose first pieces ``parts`` begin with, and how many bytes they
    share (None: no such blob)."""
    if not parts or not parts[0].local or not parts[0].keys:
        return None
    found = sources.get(parts[0].keys[0][2])
    if found is None or found[1] != 0:
        return None
    pieces = sources.recipes.get(found[0])
    if pieces is None:
        try:
            pieces = [(p.key, p.length) for p in (await store.recipe(found[0])).pieces]
        except BlobUnknown:
            return None
    shared = 0
    theirs = iter(pieces)
    for part in parts:
        for _, length, key in part.keys:
            if next(theirs, None) != (key, length):
                return (found[0], shared) if shared else None
            shared += length
    return found[0], shared


def _within(sources: PieceSources, part: _Part) -> list[Digest]:
    """The local blobs that hold the part's pieces, as ``sources`` places them (none
    when it does not place them all): the ingest holds those blobs instead of each
    piece."""
    blobs: dict[Digest, None] = {}
    for _, _, key in part.keys:
        found = sources.get(key)
        if found is None:
            return []
        blobs[found[0]] = None
    return list(blobs)


def _split(chunks: list[bytes] | list[bytearray], part: _Part) -> list[memoryview]:
    """The part's bytes (one buffer, as ``_get_range`` returns them) as its pieces."""
    assert len(chunks) == 1 and len(chunks[0]) == part.end - part.start
    view = memoryview(chunks[0])
    return [view[offset - part.start: offset - part.start + length]
            for offset, length, _ in part.keys]
