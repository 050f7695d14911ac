"""The image's layers with their file times clamped to ``SOURCE_DATE_EPOCH``.

As BuildKit's cache does, the build cache keeps each step's layer with its files' own
times, so that a new epoch (CI gives each commit its own) reuses every step that cannot
see it; a step that declares ``ARG SOURCE_DATE_EPOCH`` has the value in its instruction,
hence in its key. When the image is assembled, each layer a step made is replaced by the
same layer with its times clamped (BuildKit's ``rewrite-timestamp``), rewritten from the
cached one (:func:`builder.layers.retime.retime_layer`): the same bytes a build with that
epoch and no cache writes. The result is remembered as a cache entry of its own
(:func:`builder.cache.clamp_key`: layer and epoch), so an unchanged rebuild with the same
epoch rewrites nothing, and it travels with ``--cache-to`` like the step entries.

A build that rewrites a layer shows a step for it, as BuildKit's exporter does
(``#N rewriting layers with source-date-epoch 1700000000 (2023-11-14 22:13:20 +0000 UTC)``,
BuildKit's words, with a log line per layer and
``DONE``; a build whose clamped layers are all cached shows none, and neither does a
fast-path replay of it: :data:`builder.fastpath.REWRITE_STEP`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

import zstandard

from cas import Digest
from cas.holders import cache_holder
from cas.units import human_bytes
from registry.oci import Descriptor

from ..cache import CLAMP, CachedLayer, clamp_key
from ..extracted import BlobReader
from ..fastpath import REWRITE_STEP
from ..image import ImageState, LayerRef
from ..layers.chunked import LayerBlob
from ..layers.inflate import InflateError
from ..layers.retime import RetimeError, retime_layer
from .common import BuildError, StepEnv, _IngestSink

__all__ = ["clamped_states"]

_READ_BUFFER = 1 << 20


async def clamped_states(env: StepEnv, states: Sequence[ImageState], epoch: int
                         ) -> list[ImageState]:
    """Copies of ``states`` whose layers made by this build's steps have their times
    clamped to ``epoch`` (a layer two states share is clamped once); the states themselves
    keep the layers as cached (their extracted files serve the file outputs)."""
    jobs: dict[Digest, asyncio.Future[LayerRef]] = {}
    step: list[int] = []  # the progress step, started by the first layer rewritten

    def rewriting() -> int:
        if not step:
            when = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(epoch))
            step.append(env.progress.start(f"{REWRITE_STEP} {epoch} ({when})"))
        return step[0]

    for state in states:
        for layer in state.layers:
            if layer.made and layer.descriptor.digest not in jobs:
                jobs[layer.descriptor.digest] = asyncio.ensure_future(
                    _clamped(env, layer, epoch, rewriting))
    try:
        await asyncio.gather(*jobs.values())
    except Exception as exc:
        if step:
            env.progress.error(step[0], str(exc).splitlines()[0] if str(exc) else
                               type(exc).__name__)
        raise
    else:
        if step:
            env.progress.done(step[0])
    finally:
        for job in jobs.values():
            job.cancel()
        await asyncio.gather(*jobs.values(), return_exceptions=True)
    out = []
    for state in states:
        copy = state.copy()
        copy.layers = [jobs[layer.descriptor.digest].result() if layer.made else layer
                       for layer in state.layers]
        out.append(copy)
    return out


async def _clamped(env: StepEnv, layer: LayerRef, epoch: int,
                   rewriting: Callable[[], int]) -> LayerRef:
    source = str(layer.descriptor.digest)
    key, parent = clamp_key(source, epoch)
    cached = None if env.no_cache else await asyncio.to_thread(env.cache.lookup, key)
    if cached is not None and (not cached.digest or (
            await env.store.stat(Digest.parse(cached.digest)) is None and (
                env.remote is None or await env.remote.usable(key, cached) is not None))):
        cached = None
    if cached is None:
        n = rewriting()
        env.progress.log(n, f"{source} ({human_bytes(layer.descriptor.size)})")
        cached = await _retime(env, layer, epoch, key)
        env.progress.log(n, f"{source} done: {cached.digest}")
        await asyncio.to_thread(env.cache.record, key, parent, CLAMP, {"sde": epoch}, cached)
    # (an imported hit is not counted among the steps --explain says each cache gave)
    return LayerRef(Descriptor(cached.media_type, Digest.parse(cached.digest), cached.size),
                    Digest.parse(cached.diff_id))


async def _retime(env: StepEnv, layer: LayerRef, epoch: int, key: str) -> CachedLayer:
    digest = layer.descriptor.digest
    if env.remote is not None:
        await env.remote.fetch(digest)  # a hit still at its cache source: brought here
    loop = asyncio.get_running_loop()
    chunks = env.store.read(digest)
    ingest = await env.store.begin_ingest(algorithm="sha256")
    try:
        reader = io.BufferedReader(BlobReader(chunks, loop), _READ_BUFFER)
        try:
            blob = await asyncio.to_thread(_write, reader, layer.descriptor.media_type,
                                           epoch, _IngestSink(ingest, loop))
        except (RetimeError, EOFError, gzip.BadGzipFile, InflateError,
                zstandard.ZstdError) as exc:
            raise BuildError(f"SOURCE_DATE_EPOCH={epoch}", f"the cached layer {digest} "
                             f"cannot have its file times clamped ({exc}): build again with "
                             "--no-cache") from exc
        await ingest.commit(blob.digest, link=cache_holder(key))
    finally:
        await ingest.abort()  # a no-op once committed
        with contextlib.suppress(RuntimeError):  # (the worker may still be reading)
            await chunks.aclose()  # type: ignore[attr-defined]
    return CachedLayer(str(blob.digest), blob.size, str(blob.diff_id), blob.media_type)


def _write(blob: BinaryIO, media_type: str, epoch: int, sink: _IngestSink) -> LayerBlob:
    layer = retime_layer(blob, media_type, epoch, sink)  # type: ignore[arg-type]
    sink.flush()
    return layer
