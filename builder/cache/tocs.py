"""The TOCs an exported cache carries (:mod:`builder.lazyfs.toc`): one per gzip layer,
so that a runner importing the cache can mount a layer it has not fetched and read only
the files a RUN step reads (:mod:`builder.lazyfs.layers`).

A TOC is made once per layer and kept in the store, linked by the holder
``cache:toc:<layer digest>``; a layer that stayed at its cache source keeps the TOC it
was imported with (also left at the source until something reads it).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cas import Digest, Store
from cas.holders import cache_holder
from registry.oci import Descriptor

from ..lazyfs.toc import TOC_MEDIA_TYPE, TocError, build_toc

if TYPE_CHECKING:
    from .lazy import RemoteLayers

__all__ = ["layer_tocs", "toc_holder"]


def toc_holder(layer: Digest) -> str:
    return cache_holder(f"toc:{layer}")


def _gzip(desc: Descriptor) -> bool:
    return desc.media_type.endswith(("+gzip", ".tar.gzip"))


async def _make(store: Store, layer: Descriptor) -> Descriptor | None:
    from ..extracted import BlobReader

    linked = await store.linked(toc_holder(layer.digest))
    for digest in linked:
        info = await store.stat(digest)
        if info is not None:
            return Descriptor(TOC_MEDIA_TYPE, digest, info.size)
    reader = io.BufferedReader(BlobReader(store.read(layer.digest),
                                          asyncio.get_running_loop()), 1 << 20)
    try:
        data = await asyncio.to_thread(build_toc, reader, str(layer.digest), layer.size)
    except TocError:
        return None  # not a multi-member gzip layer: read whole, as before
    finally:
        await reader.raw.close_source()
    digest = Digest.of(data)
    if await store.stat(digest) is None:
        await store.put(data, expected=digest)
    await store.link(toc_holder(layer.digest), digest)
    return Descriptor(TOC_MEDIA_TYPE, digest, len(data))


async def layer_tocs(layers: Iterable[Descriptor], store: Store,
                     remote: RemoteLayers | None) -> dict[str, Descriptor]:
    """layer digest -> its TOC's descriptor, for the gzip ones of ``layers`` that are in
    the store (made, or found made) or lazy with an imported TOC."""
    out: dict[str, Descriptor] = {}
    for layer in layers:
        if not _gzip(layer):
            continue
        imported = remote.tocs.get(layer.digest) if remote is not None else None
        if remote is not None and remote.pending([layer.digest]):
            if imported is not None:
                out[str(layer.digest)] = imported
            continue
        made = await _make(store, layer) if await store.stat(layer.digest) else imported
        if made is not None:
            out[str(layer.digest)] = made
    return out
