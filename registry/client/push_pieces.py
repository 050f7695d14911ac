"""Pushing a blob piece by piece to a registry with pybuild's extension
(``_pybuild/blob/uploads``, docs/piece-index.md).

The blob is in the local ``cas.Store``, so its recipe (pieces as cut locally) is known.
The client sends the registry a *plan* - the blob's digest, size, pieces (BLAKE3 keys and
lengths) and *bases*, blobs of the destination repository that likely hold many of the
same pieces (the layers of the previous version) - and the registry answers which
pieces it lacks. Only those are sent (``PATCH``, batches of up to ``part_size`` bytes,
``window`` at a time), then the plan again with the digest (``PUT``): the registry
assembles the blob from the pieces it has and those it received, and commits it only
if the whole blob hashes to the digest.

- The session URL is remembered in ``images.db`` (``pushes``, keyed
  ``host/name@digest#pieces``) before the first piece is sent; the next push of the blob
  asks the session what it still lacks, so pieces already sent are not sent again.
- Sending a piece twice is harmless (pieces are content-addressed), so a batch whose
  connection breaks is simply sent again.
- When the registry would take nothing from its bases (nothing to reuse) the session is
  cancelled and :func:`push_pieces` returns None: the caller sends the blob as one
  ordinary upload, which is faster than many piece requests. So it does when the
  registry refuses the plan (over its limits: 400).

Progress counts the pieces sent as transferred and the others as reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence

from cas import Digest

from ..errors import BLOB_UPLOAD_UNKNOWN, RegistryError
from ..oci import Descriptor, Index, Manifest, parse_manifest
from .connections import WireError
from .image_store import ImageNotFound, ImageStore
from .progress import Progress
from .refs import ImageRef, InvalidReference, parse_image_ref
from .remote import RegistryClient, TransportError
from .transfer import TransferOptions, gather_or_cancel

__all__ = ["MAX_BASES", "destination_tags", "piece_bases", "push_pieces"]

MAX_BASES = 64  # what pybuild's registry accepts in one plan
_MAX_BATCH_PIECES = 96  # per PATCH: what pybuild's registry accepts (one header under 8 KiB)
_OTHER_TAGS = 3
_BROKEN = (TransportError, asyncio.TimeoutError, WireError)


async def destination_tags(client: RegistryClient, dst: ImageRef) -> list[str]:
    """The tags of ``dst``'s repository (none for a new repository)."""
    try:
        return await client.tags(dst.api_host, dst.name, push=True)
    except (RegistryError, TransportError, ValueError):
        return []


async def piece_bases(client: RegistryClient, images: ImageStore, dst: ImageRef,
                      tags: list[str] | None = None) -> list[Digest]:
    """Blobs of ``dst``'s repository likely to share pieces with what is pushed there:
    the layers of the image ``dst``'s tag names on the registry now (the version being
    replaced), of ``latest`` and of up to :data:`_OTHER_TAGS` more tags (the last in
    sort order: version-like tags put the newest there), then those of local images of
    the same repository. The registry ignores any it does not hold there. ``tags``: the
    repository's tags when the caller has them (:func:`destination_tags`)."""
    out: dict[Digest, None] = {}
    host, name = dst.api_host, dst.name
    if tags is None:
        tags = await destination_tags(client, dst)
    wanted = [t for t in (dst.tag, "latest") if t and t in tags]
    wanted += sorted((t for t in tags if t not in wanted), reverse=True)[:_OTHER_TAGS]
    found = await asyncio.gather(*(_manifests(client, dst.with_tag(tag)) for tag in wanted))
    for manifests in found:
        for manifest in manifests:
            out.update(dict.fromkeys(layer.digest for layer in manifest.layers))
    for image in await images.list():
        try:
            ref = parse_image_ref(image.ref)
            if (ref.api_host, ref.name) != (host, name):
                continue
            manifest, _ = await images.get(image.ref)
        except (InvalidReference, ImageNotFound, ValueError, KeyError):
            continue
        out.update(dict.fromkeys(layer.digest for layer in manifest.layers))
    return list(out)[:MAX_BASES]


async def _manifests(client: RegistryClient, ref: ImageRef) -> list[Manifest]:
    """The image manifest ``ref`` names (an index: up to four of its manifests)."""
    try:
        body, media_type, _ = await client.get_manifest(ref, push=True)
        _, doc = parse_manifest(body, media_type)
        if isinstance(doc, Manifest):
            return [doc]
        out = []
        if isinstance(doc, Index):
            for entry in doc.manifests[:4]:
                child, child_type, _ = await client.get_manifest(ref.with_digest(entry.digest), push=True)
                _, sub = parse_manifest(child, child_type)
                if isinstance(sub, Manifest):
                    out.append(sub)
        return out
    except (RegistryError, TransportError, ValueError, KeyError):
        return []


def _plan(desc: Descriptor, pieces: list[tuple[str, int]], bases: Sequence[Digest]) -> bytes:
    return json.dumps({
        "digest": str(desc.digest),
        "size": desc.size,
        "pieces": [{"key": k, "length": n} for k, n in pieces],
        "bases": [{"digest": str(b)} for b in bases[:MAX_BASES] if b != desc.digest],
    }).encode()


def _batches(pieces: list[tuple[str, int]], missing: list[int], size: int) -> list[list[int]]:
    out: list[list[int]] = []
    run: list[int] = []
    run_bytes = 0
    for i in missing:
        n = pieces[i][1]
        if run and (run_bytes + n > size or len(run) >= _MAX_BATCH_PIECES):
            out.append(run)
            run, run_bytes = [], 0
        run.append(i)
        run_bytes += n
    if run:
        out.append(run)
    return out


async def push_pieces(
    client: RegistryClient, images: ImageStore, dst: ImageRef, desc: Descriptor,
    progress: Progress, bases: Sequence[Digest], options: TransferOptions,
    uploads: asyncio.Semaphore | None = None,
) -> str | None:
    """Push the local blob ``desc`` to ``dst``'s repository piece by piece; "pushed", or
    None when an ordinary upload is the better way (nothing to reuse). The caller has
    checked that the registry offers the extension and started the progress task.
    ``uploads``: held while the pieces are sent."""
    host, name, digest = dst.api_host, dst.name, desc.digest
    key = str(digest)
    recipe = await images.store.recipe(digest)
    pieces = [(p.key, p.length) for p in recipe.pieces]
    offsets = [p.offset for p in recipe.pieces]
    plan = _plan(desc, pieces, bases)
    session_key = f"{host}/{name}@{digest}#pieces"
    location = await images.pending_push(session_key)
    missing: list[int] | None = None
    if location is not None:
        try:
            missing = await client.query_pieces(host, name, location, plan)
        except (RegistryError, *_BROKEN):
            missing = None  # expired or unknown: start over
    if missing is None:
        try:
            location, missing = await client.start_piece_upload(host, name, plan)
        except RegistryError as exc:
            if exc.status in (400, 413):  # a plan over the registry's limits
                return None
            raise
        if len(missing) == len(pieces):
            with contextlib.suppress(RegistryError, *_BROKEN):  # else it expires
                await client.cancel_piece_upload(host, name, location)
            return None
        await images.set_pending_push(session_key, location)
    assert location is not None
    sent_bytes = sum(pieces[i][1] for i in missing)
    progress.advance(key, desc.size - sent_bytes, reused=True)
    for attempt in range(2):
        try:
            async with uploads if uploads is not None else contextlib.nullcontext():
                await _send(client, images, dst, desc, location, pieces, offsets, missing,
                            progress, options)
        except RegistryError as exc:
            if exc.code is BLOB_UPLOAD_UNKNOWN:  # expired meanwhile: the next run starts over
                await images.set_pending_push(session_key, None)
                if await _finished_elsewhere(client, dst, digest):
                    return "exists"
            raise
        try:
            await client.finish_piece_upload(host, name, location, digest, plan)
            break
        except RegistryError as exc:
            if exc.code is BLOB_UPLOAD_UNKNOWN and await _finished_elsewhere(client, dst, digest):
                await images.set_pending_push(session_key, None)
                return "exists"
            again = _still_missing(exc)
            if again is None or attempt:
                if exc.status < 500:  # refused: the session is of no more use
                    await images.set_pending_push(session_key, None)
                raise
            missing = again  # a base went away meanwhile: send those pieces too
    await images.set_pending_push(session_key, None)
    return "pushed"


async def _finished_elsewhere(client: RegistryClient, dst: ImageRef, digest: Digest) -> bool:
    """Whether the registry holds the blob whose session went away: another push of it
    from this storage, running at the same time, took the session up from images.db as one
    to resume, and finished it."""
    return await client.head_blob(dst.api_host, dst.name, digest, push=True) is not None


def _still_missing(exc: RegistryError) -> list[int] | None:
    for err in exc.all():
        detail = err.detail
        if isinstance(detail, dict) and isinstance(detail.get("missing"), list):
            return [int(i) for i in detail["missing"]]
    return None


async def _send(
    client: RegistryClient, images: ImageStore, dst: ImageRef, desc: Descriptor, location: str,
    pieces: list[tuple[str, int]], offsets: list[int], missing: list[int], progress: Progress,
    options: TransferOptions,
) -> None:
    """Send the ``missing`` pieces in batches, ``options.window`` requests at a time."""
    gate = asyncio.Semaphore(options.window)
    key = str(desc.digest)

    async def one(batch: list[int]) -> None:
        async with gate:
            data = bytearray()
            i = 0
            while i < len(batch):  # consecutive pieces are one read of the local blob
                j = i
                while j + 1 < len(batch) and batch[j + 1] == batch[j] + 1:
                    j += 1
                start = offsets[batch[i]]
                length = offsets[batch[j]] + pieces[batch[j]][1] - start
                async for chunk in images.store.read(desc.digest, start, length):
                    data += chunk
                i = j + 1
            listed = [pieces[b] for b in batch]
            for attempt in range(options.retries + 1):
                try:
                    await client.patch_pieces(dst.api_host, dst.name, location, listed, bytes(data))
                    break
                except _BROKEN:
                    if attempt == options.retries:
                        raise
                    await asyncio.sleep(0.1 * 2**attempt)
            progress.advance(key, len(data))

    await gather_or_cancel([asyncio.create_task(one(b))
                            for b in _batches(pieces, missing, options.part_size)])
