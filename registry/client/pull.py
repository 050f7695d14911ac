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
  a fresh ingest is instead assembled from the recipe's pieces
  (:mod:`registry.client.pull_assembly`): the pieces the store has are not copied, only
  read for the digest;
- otherwise (no recipe, or none of its pieces local) the blob is one streamed GET, or,
  from ``parallel_threshold`` bytes up and when the server accepts ranges, ``window``
  parallel Range parts of ``part_size``.

Parts are fetched concurrently but written in order. The ingest commits with the
expected digest and size: wrong bytes, a wrong length or a truncated body raise
:class:`BlobError` naming the blob, and nothing becomes visible.

The parts (Range parts, recipe pieces) are :mod:`registry.client.pull_parts`; the
ingest they are written into, :mod:`registry.client.pull_sink`; the options and errors,
:mod:`registry.client.transfer`. Pushing is :mod:`registry.client.push`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from cas import (
    DigestMismatch,
    Ingest,
    IngestUnknown,
    SizeMismatch,
    SourceFailed,
)

from ..errors import RegistryError
from ..oci import Descriptor
from .connections import WireError
from .image_store import ImageStore
from .progress import Progress
from .pull_assembly import assemble, plan_assembly
from .pull_parts import (
    PieceSources,
    _EvenParts,
    _fetch_part,
    _Part,
    _plan_pieces,
    _run_parts,
    _stream_local_run,
    local_piece_sources,
    wrong_size,
)
from .pull_sink import _Sink
from .refs import ImageRef
from .remote import RangeIgnored, RegistryClient, TransportError
from .transfer import BlobError, TransferOptions

__all__ = ["BlobError", "PieceSources", "TransferOptions", "local_piece_sources", "pull_blob"]


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
    sources: PieceSources | Callable[[], Awaitable[PieceSources]] | None = None,
    fetched: Callable[[], None] | None = None,
) -> str:
    """Make ``desc``'s blob present in the store; returns "exists" or "pulled".

    ``sources`` (see :func:`local_piece_sources`, or a coroutine function that finds
    them when a blob needs them) lets local pieces be read in runs. ``fetched`` is
    called when a blob assembled from its recipe has received every missing piece
    (hashing what the store holds and the commit remain): a caller that limits the
    blobs transferred at once can start the next one."""
    store = images.store
    key = str(desc.digest)
    progress.start(key, f"{desc.digest.encoded[:12]}", desc.size)
    await images.forget_dead_transfers()
    if await store.stat(desc.digest) is not None:
        if link:
            await store.link(link, desc.digest)
        progress.finish(key, "exists")
        return "exists"
    ing, resumed, claim = await _open_ingest(images, desc)
    sink = _Sink(images, ing, desc, progress, options, recorded=resumed)
    sink.claim = claim
    if ing.offset:
        progress.advance(key, ing.offset, reused=True)
    try:
        await _fill(client, images, src, desc, sink, recipes and options.recipes, options,
                    sources or PieceSources(), fetched)
        if ing.offset < desc.size:
            raise BlobError(f"blob {desc.digest}: the body ended at byte {ing.offset} of {desc.size}")
        await ing.commit(desc.digest, size=desc.size, link=link)
    except (DigestMismatch, SizeMismatch) as exc:
        if sink.recorded:
            await images.set_pending_pull(desc.digest, None)
        _release(images, sink)
        # In the registry's words, not the store's (whose advice is for an uploader).
        what = (f"its bytes hash to {exc.actual}" if isinstance(exc, DigestMismatch)
                else f"it is {exc.actual} bytes, not {exc.expected}")
        error = BlobError(
            f"blob {desc.digest} from {src.repository} does not match its digest ({what}); "
            "nothing was kept - the registry serves corrupt data, tell its operator")
        progress.fail(key, error)
        raise error from exc
    except BlobError as exc:
        await _drop(images, sink)
        progress.fail(key, exc)
        raise
    except BaseException as exc:
        # Keep what arrived for the next attempt (resume), unless the ingest is unusable;
        # one assembled from the recipe is not resumable (it fetched little): dropped.
        # To its end even if we are cancelled again (a second Ctrl-C, the other blobs
        # stopped): the image store waits for it before it closes.
        with contextlib.suppress(Exception):
            await asyncio.shield(images.finish(
                _drop(images, sink) if ing.assembled else _keep(images, sink)))
        if isinstance(exc, (TransportError, RegistryError, WireError, asyncio.TimeoutError,
                            SourceFailed)):
            again = ("again (it fetches only the pieces still missing)" if ing.assembled
                     else f"again to resume from byte {ing.offset}" if ing.offset else "again")
            fix = (f"run the command {again}" if not isinstance(exc, RegistryError) or exc.status != 404
                   else "the registry has lost a blob the image's manifest names (asking again gets the "
                        "same answer): push the image there again, or tell the registry's operator")
            error = BlobError(f"blob {desc.digest} from {src.repository}: {exc}; {fix}")
            progress.fail(key, error)
            raise error from exc
        progress.fail(key, exc)
        raise
    if sink.recorded:
        await images.set_pending_pull(desc.digest, None)
    _release(images, sink)
    progress.finish(key, "pulled")
    return "pulled"


async def _open_ingest(images: ImageStore, desc: Descriptor) -> tuple[Ingest, bool, int | None]:
    """The interrupted ingest of an earlier pull of this blob (True), or a new one; with
    this process's claim on it (:meth:`ImageStore.claim_ingest`). The ingest of a pull of
    the blob that another process runs now is left to it."""
    pending = await images.pending_pull(desc.digest)
    claim = None if pending is None else images.claim_ingest(pending)
    if pending is not None and claim is not None:
        with contextlib.suppress(IngestUnknown):
            ing = await images.store.resume_ingest(pending)
            if ing.offset <= desc.size:
                return ing, True, claim
            await ing.abort()
        images.release_ingest(pending, claim)
        await images.set_pending_pull(desc.digest, None)
    # Not recorded in images.db yet: an ingest that never reached a checkpoint holds
    # nothing worth resuming (cas expires it).
    ing = await images.store.begin_ingest(algorithm=desc.digest.algorithm)
    return ing, False, images.claim_ingest(ing.id)


def _release(images: ImageStore, sink: _Sink) -> None:
    """Give up this process's claim on the sink's ingest (its transfer has ended)."""
    if sink.claim is not None:
        images.release_ingest(sink.ing.id, sink.claim)
        sink.claim = None


async def _keep(images: ImageStore, sink: _Sink) -> None:
    """Checkpoint what arrived for a resume; an ingest that received nothing, or cannot
    be checkpointed (a full disk), is dropped, so that it does not stay open (and hold
    space) until it expires. Raises nothing: the failure it cleans up after is what the
    caller reports."""
    if sink.ing.offset == 0:
        await _drop(images, sink)
        return
    try:
        await sink.checkpoint()
    except Exception:
        await _drop(images, sink)
    _release(images, sink)


async def _drop(images: ImageStore, sink: _Sink) -> None:
    with contextlib.suppress(Exception):
        await sink.ing.abort()
    if sink.recorded:
        await images.set_pending_pull(sink.desc.digest, None)
    _release(images, sink)


async def _fill(
    client: RegistryClient, images: ImageStore, src: ImageRef, desc: Descriptor,
    sink: _Sink, recipes: bool, options: TransferOptions,
    sources: PieceSources | Callable[[], Awaitable[PieceSources]],
    fetched: Callable[[], None] | None = None,
) -> None:
    host, name, digest = src.api_host, src.name, desc.digest
    start = sink.offset
    if start >= desc.size:
        return
    if desc.nondistributable and desc.urls:
        await _from_urls(client, src, desc, sink, options)
        return
    parts: Sequence[_Part] | None = None
    if recipes:
        try:
            pieces = await client.recipe(host, name, digest)
        except (RegistryError, TransportError, ValueError, KeyError):
            pieces = None  # no recipe for this blob: fall back to whole-blob transfer
        if pieces is not None and (not pieces or sum(p[1] for p in pieces) != desc.size):
            pieces = None  # a recipe of other bytes than the manifest's: ignored
        if pieces is not None:
            if callable(sources):
                sources = await sources()
            # Pieces of the local layers are held (their blobs' recipes name them; one
            # that GC took meanwhile is fetched when holding it fails); the store is asked
            # about the others only.
            have = {k for _, _, k in pieces if k in sources}
            rest = [k for _, _, k in pieces if k not in sources]
            if rest:
                have |= await images.store.has_pieces(rest)
            if have and start == 0:  # a fresh ingest: commit from the recipe
                plan = plan_assembly(pieces, desc.size, have, options.part_size)
                if plan is not None:
                    await assemble(client, images, src, desc, sink, plan, options, fetched,
                                   sources)
                    return
            if have:  # with nothing local, one stream beats many small Range requests
                parts = _plan_pieces(pieces, have, start, options.part_size, sources)
    if parts is None:
        remaining = desc.size - start
        ranges = False
        if start > 0 or remaining >= options.parallel_threshold:
            head = await client.head_blob(host, name, digest)
            ranges = bool(head and head[1]) and host not in client.ranges_ignored
            if head and head[0] > 0 and head[0] != desc.size:
                raise BlobError(wrong_size(desc, head[0]))
        if remaining < options.parallel_threshold or not ranges:
            await _stream(client, src, desc, sink, options)
            return
        parts = _EvenParts(start, desc.size, options.part_size)
    try:
        await _run_parts(parts, sink, lambda part: _fetch_part(client, images, src, desc, part, options),
                         lambda part: _stream_local_run(images, sink, part),
                         options.window, options.window * options.part_size)
    except RangeIgnored:
        # It said it takes ranges (Accept-Ranges) and answered one with the whole blob:
        # the parts written so far stay, the rest comes in one stream (what the ingest
        # holds read past, as for a registry that says nothing of ranges).
        await _stream(client, src, desc, sink, options)


async def _from_urls(
    client: RegistryClient, src: ImageRef, desc: Descriptor, sink: _Sink, options: TransferOptions,
) -> None:
    """A nondistributable (foreign) layer from the URLs its descriptor names, in order, then
    from the registry, as containerd and Docker fetch one (the digest decides)."""
    failures = []
    for url in (*(desc.urls or ()), None):
        if url is not None and not url.startswith(("http://", "https://")):
            failures.append(f"{url}: not an http(s) URL")
            continue
        try:
            await _stream(client, src, desc, sink, options, url)
            return
        except (TransportError, RegistryError, WireError, TimeoutError, SourceFailed) as exc:
            failures.append(str(exc))
    raise BlobError(f"nondistributable layer {desc.digest}: neither its urls nor {src.repository} "
                    f"serve it ({'; '.join(failures)})")


async def _stream(
    client: RegistryClient, src: ImageRef, desc: Descriptor, sink: _Sink, options: TransferOptions,
    url: str | None = None,
) -> None:
    """One GET from the sink's offset, re-requested from where it broke off (a Range)
    when the body is cut. The body is read on a worker thread straight into the ingest
    (:meth:`_Sink.receive`). A registry that ignores Range answers with the whole blob:
    what the ingest holds is read past (as containerd does), the rest goes on."""
    told = False
    for attempt in range(options.retries + 1):
        try:
            async with client.open_blob(src.api_host, src.name, desc.digest, sink.offset,
                                        whole=True, url=url) as resp:
                if resp.status == 200 and sink.offset:
                    if not told:
                        sink.progress.message(
                            f"{desc.digest.encoded[:12]}: the registry ignores Range: reading "
                            f"past the {sink.offset} bytes already here")
                        told = True
                    await sink.skip(resp)
                await sink.receive(resp)
            if sink.offset >= desc.size:
                return
        except (TimeoutError, SourceFailed, WireError):
            if attempt == options.retries:
                raise
        await sink.checkpoint()
        await asyncio.sleep(0.1 * 2**attempt)
