"""``--cache-to`` / ``--cache-from`` ``type=registry,ref=HOST/REPO:TAG``: the build cache
artifact (:mod:`builder.cache.remote`) pushed to and pulled from an OCI registry with
pybuild's registry client (any OCI Distribution registry)."""

from __future__ import annotations

from cas import Store
from registry.oci import OCI_MANIFEST, Descriptor, Manifest

from .manifest import CacheManifest

__all__ = ["pull_cache", "push_cache"]


async def push_cache(ref: str, config: bytes, art: Manifest, store: Store) -> None:
    """Push the layer blobs (from ``store``), the config and the manifest to ``ref``."""
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
            for desc in (*art.layers, art.config):
                await push_blob(client, images, dst, desc, Progress("quiet"))
            await client.put_manifest(dst, art.to_bytes(), OCI_MANIFEST)
    finally:
        await images.close()


async def pull_cache(ref: str, config_type: str, store: Store) -> CacheManifest:
    """Read the artifact at ``ref``: its manifest and config (the cache manifest); no
    layer blob (:func:`pull_layer` fetches one)."""
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
            raw, _, _ = await client.get_manifest(src)
            art = Manifest.parse(raw)
            if art.config.media_type != config_type:
                raise ValueError(f"its config is {art.config.media_type}, "
                                 f"not a build cache ({config_type})")
            await pull_blob(client, images, src, art.config, Progress("quiet"))
            manifest = CacheManifest.from_json(await store.read_bytes(art.config.digest))
    finally:
        await images.close()
    return manifest


async def pull_layer(ref: str, desc: Descriptor, link: str, store: Store) -> None:
    """Pull one layer blob of the cache at ``ref`` into ``store``, linked ``link``."""
    from registry.client.image_store import ImageStore
    from registry.client.progress import Progress
    from registry.client.pull import pull_blob
    from registry.client.refs import parse_image_ref
    from registry.client.remote import RegistryClient

    from ..base import client_options

    images = await ImageStore.open(store=store)
    try:
        async with RegistryClient(client_options()) as client:
            await pull_blob(client, images, parse_image_ref(ref), desc, Progress("quiet"),
                            link=link)
    finally:
        await images.close()
