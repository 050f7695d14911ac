"""``--cache-to`` / ``--cache-from`` ``type=registry,ref=HOST/REPO:TAG``: the build cache
artifact (:mod:`builder.cache.remote`) pushed to and pulled from an OCI registry with
pybuild's registry client (any OCI Distribution registry); and the inline cache of an
image (``--cache-to type=inline``), read from its config."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from cas import Store
from registry.oci import OCI_MANIFEST, Descriptor, Index, Manifest, parse_manifest

from .manifest import INLINE_KEY, CacheManifest

if TYPE_CHECKING:
    from .lazy import RemoteLayers

__all__ = ["pull_cache", "push_cache"]


async def push_cache(ref: str, config: bytes, art: Manifest, store: Store,
                     remote: RemoteLayers | None = None) -> None:
    """Push the layer blobs (from ``store``; lazy ones through ``remote``: mounted or
    streamed from their source), the config and the manifest to ``ref``."""
    from registry.client.image_store import ImageStore
    from registry.client.progress import Progress
    from registry.client.push import push_blob
    from registry.client.refs import parse_image_ref
    from registry.client.remote import RegistryClient

    from ..base import client_options

    dst = parse_image_ref(ref)
    if await store.stat(art.config.digest) is None:
        await store.put(config, expected=art.config.digest)
    images = await ImageStore.open(store=store)
    try:
        async with RegistryClient(client_options()) as client:
            async def put(desc: Descriptor) -> None:
                if remote is not None:
                    await remote.put_blob(client, images, dst, desc, Progress("quiet"))
                else:
                    await push_blob(client, images, dst, desc, Progress("quiet"))

            await asyncio.gather(*(put(d) for d in dict.fromkeys((*art.layers, art.config))))
            await client.put_manifest(dst, art.to_bytes(), OCI_MANIFEST)
    finally:
        await images.close()


async def pull_cache(ref: str, config_type: str, store: Store) -> CacheManifest:
    """Read the cache at ``ref``: a cache artifact's manifest and config, or an image's
    (every platform's, for an index) config with its inline cache; no layer blob."""
    from registry.client.image_store import ImageStore
    from registry.client.progress import Progress
    from registry.client.pull import pull_blob
    from registry.client.refs import parse_image_ref
    from registry.client.remote import RegistryClient

    from ..base import client_options

    src = parse_image_ref(ref)
    images = await ImageStore.open(store=store)
    try:
        async with RegistryClient(client_options()) as client:
            raw, media_type, _ = await client.get_manifest(src)
            _, obj = parse_manifest(raw, media_type)
            if isinstance(obj, Index):
                children = []
                for entry in obj.manifests:
                    child_raw, child_type, _ = await client.get_manifest(
                        src.with_digest(entry.digest))
                    _, child = parse_manifest(child_raw, child_type)
                    if isinstance(child, Manifest):
                        children.append(child)
            else:
                children = [obj]
            manifests = []
            for art in children:
                await pull_blob(client, images, src, art.config, Progress("quiet"))
                data = await store.read_bytes(art.config.digest)
                if art.config.media_type == config_type:
                    manifests.append(CacheManifest.from_json(data))
                elif len(children) == 1 or INLINE_KEY in _config_doc(data):
                    manifests.append(_inline(data, art.config.media_type, config_type))
    finally:
        await images.close()
    return CacheManifest.of([e for m in manifests for e in m.entries],
                            [x for m in manifests for x in m.mounts],
                            {k: v for m in manifests for k, v in m.tocs})


_BUILDKIT_INLINE = "moby.buildkit.cache.v0"  # BUILDKIT_INLINE_CACHE=1's config field


def _config_doc(data: bytes) -> dict[str, object]:
    try:
        doc = json.loads(data)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _inline(data: bytes, media_type: str, config_type: str) -> CacheManifest:
    """The inline cache in an image config; ValueError when it has none."""
    doc = _config_doc(data)
    if INLINE_KEY not in doc and _BUILDKIT_INLINE in doc:
        raise ValueError(f"it holds BuildKit's inline cache ({_BUILDKIT_INLINE}), whose keys "
                         "pybuild cannot use; export pybuild's own with --cache-to "
                         "type=inline or type=registry")
    if INLINE_KEY not in doc:
        raise ValueError(f"its config is {media_type}, neither a build cache "
                         f"({config_type}) nor an image with an inline cache (build it "
                         "with --cache-to type=inline)")
    return CacheManifest.from_doc(doc[INLINE_KEY])


