"""Moving the build cache between machines: ``--cache-to`` / ``--cache-from``.

BuildKit's syntax: ``type=local,dest=DIR[,mode=min|max]`` / ``type=local,src=DIR``,
``type=registry,ref=HOST/REPO:TAG[,mode=min|max]`` (both ways) and ``type=inline``
(export). The cache travels as an OCI artifact, in an OCI image layout or in a registry
(:mod:`.registry_cache`): a manifest whose config is the :class:`CacheManifest` document
(:data:`CONFIG_MEDIA_TYPE`) and whose layers are the entries' layer blobs
(:meth:`CacheManifest.descriptors`); or, inline, in the built image's config
(:data:`builder.cache.manifest.INLINE_KEY`), read back through ``type=registry,ref=IMAGE``.
``cache-mounts=true`` adds the build's ``RUN --mount=type=cache`` contents (:mod:`.mounts`).

Import reads the manifest and its config only and adds the entries to the local cache
(``import_manifest``); a layer blob stays at its source until a step that must run, an
output or an export needs it (:mod:`.lazy`), so the entries that miss cost nothing and a
fully cached build pushed to the cache's registry moves no layer at all. ``mode=min``
exports the steps of the final stage's key chain, ``mode=max`` every step this build
looked up or ran.

A failing ``--cache-from`` is a warning, as in BuildKit; a failing ``--cache-to`` fails
the build unless ``ignore-error=true``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from cas import Digest, Store
from registry.client.errors import ClientError
from registry.client.layout_claims import undone_on_failure
from registry.client.layouts import LayoutError, OciLayout
from registry.errors import RegistryError
from registry.oci import OCI_MANIFEST, Descriptor, Manifest

from .entries import CLAMP, FACTS, clamp_key
from .lazy import LazyLayerError, MountSources, RemoteLayers
from .manifest import CacheManifest, MountEntry
from .mounts import export_mounts
from .protocol import BuildCacheBackend
from .spec import CacheSpec, CacheSpecError, parse_cache_spec
from .tocs import layer_tocs
from .tracking import TrackingCache

__all__ = ["ARTIFACT_TYPE", "CONFIG_MEDIA_TYPE", "CacheSpec", "CacheSpecError",
           "TrackingCache", "export_all", "export_cache", "import_all", "import_cache",
           "inline_manifest", "parse_cache_spec", "report_hits"]

CONFIG_MEDIA_TYPE = "application/vnd.pybuild.buildcache.config.v1+json"
ARTIFACT_TYPE = "application/vnd.pybuild.buildcache.v1"
_TAG = "latest"


def _artifact(manifest: CacheManifest) -> tuple[bytes, Manifest]:
    config = manifest.to_json()
    desc = Descriptor(CONFIG_MEDIA_TYPE, Digest.of(config), len(config))
    return config, Manifest(desc, tuple(manifest.descriptors()), media_type=OCI_MANIFEST,
                            artifact_type=ARTIFACT_TYPE)


async def export_cache(spec: CacheSpec, manifest: CacheManifest, store: Store,
                       remote: RemoteLayers | None = None) -> int:
    """Write ``manifest`` and its blobs where ``spec`` says; returns the blob count. Lazy
    layers (``remote``) are mounted or streamed to a registry, fetched for a directory."""
    config, art = _artifact(manifest)
    if spec.type == "registry":
        from .registry_cache import push_cache

        await push_cache(spec.where, config, art, store, remote)
        return len(art.layers)
    if remote is not None:
        await remote.materialise([d.digest for d in art.layers])
    # A failed export takes back only the blobs no other writer of the directory needs.
    async with undone_on_failure(Path(spec.where)) as layout:
        assert layout is not None
        for desc in art.layers:
            await layout.export_blob(store, desc.digest)
        await layout.write_bytes(art.config.digest, config)
        body = art.to_bytes()
        digest = Digest.of(body)
        await layout.write_bytes(digest, body)
        await layout.tag(Descriptor(OCI_MANIFEST, digest, len(body), artifact_type=ARTIFACT_TYPE),
                         _TAG)
    return len(art.layers)


async def import_cache(spec: CacheSpec, cache: BuildCacheBackend, store: Store) -> CacheManifest:
    """Read the cache ``spec`` names (its manifest and config, no layer blob) into
    ``cache``; returns the manifest read. A registry reference may also name an image
    built with ``--cache-to type=inline`` (or an index of such images). LayoutError /
    ValueError: it cannot be read."""
    if spec.type == "registry":
        from .registry_cache import pull_cache

        manifest = await pull_cache(spec.where, CONFIG_MEDIA_TYPE, store)
        await asyncio.to_thread(cache.import_manifest, manifest)
        return manifest
    layout = OciLayout(Path(spec.where))
    entry = await layout.find(_TAG)
    try:
        art = Manifest.parse(await layout.read_bytes(entry))
        if art.config.media_type != CONFIG_MEDIA_TYPE:
            raise ValueError(f"its config is {art.config.media_type}, "
                             f"not a build cache ({CONFIG_MEDIA_TYPE})")
        manifest = CacheManifest.from_json(await layout.read_bytes(art.config))
    except (ValueError, json.JSONDecodeError) as exc:
        raise LayoutError(f"{spec.where}: {exc}") from exc
    await asyncio.to_thread(cache.import_manifest, manifest)
    return manifest


class _Progress(Protocol):
    def info(self, text: str) -> None: ...


async def import_all(specs: Collection[CacheSpec], cache: TrackingCache, store: Store,
                     progress: _Progress, mounts: MountSources | None = None) -> None:
    """Import every ``--cache-from``; one that cannot be read is a warning line. A layer
    blob (and its TOC) stays at its source until it is needed (:mod:`.lazy`)."""
    remote = mounts.layers if mounts is not None else None
    for spec in specs:
        try:
            manifest = await import_cache(spec, cache, store)
        except (OSError, ValueError, ClientError, RegistryError) as exc:
            progress.info(f"WARNING: --cache-from {spec}: cannot import the cache: {exc}")
            continue
        for key in cache.last_new:
            cache.origin.setdefault(key, spec)
        if remote is not None:
            for layer, toc in manifest.tocs:
                remote.tocs.setdefault(Digest.parse(layer), toc)
                remote.sources.setdefault(toc.digest, (spec, toc, set()))
        if mounts is not None:
            for m in manifest.mounts:
                mounts.imported.setdefault(m.id, (spec, m))
        steps = sum(1 for e in manifest.entries if e.instruction not in (FACTS, CLAMP))
        extra = f", {len(manifest.mounts)} cache mounts" if manifest.mounts else ""
        progress.info(f"importing cache from {spec}: {steps} steps{extra}")


def report_hits(cache: TrackingCache, progress: _Progress) -> None:
    """``--explain``: which ``--cache-from`` each imported hit came from."""
    for source, keys in sorted(cache.hits.items()):
        progress.info(f"cache hits from {source}: {len(keys)} steps")


def inline_manifest(cache: TrackingCache, final_key: str, epoch: int | None = None
                    ) -> CacheManifest:
    """What ``--cache-to type=inline`` puts into the image's config: the final stage's
    chain (mode=min), whose layers are the image's own. With an ``epoch`` those are the
    steps' layers clamped to it: the entries name them, marked with the epoch (a build
    with another epoch runs those steps, as the files' own times are not in the image)."""
    chain = cache.wanted(final_key, "min")
    clamped = {e.parent.removeprefix(f"{CLAMP}:"): e.layer for e in chain.entries
               if e.instruction == CLAMP and epoch is not None
               and e.key == clamp_key(e.parent.removeprefix(f"{CLAMP}:"), epoch)[0]}
    entries = []
    for e in chain.entries:
        if e.instruction == CLAMP:
            continue
        if epoch is not None and e.layer.digest and e.layer.epoch is None:
            layer = clamped.get(e.layer.digest)
            if layer is None:
                continue
            e = replace(e, layer=replace(layer, created=e.layer.created, epoch=epoch))
        entries.append(e)
    return CacheManifest.of(entries)


async def export_all(specs: Collection[CacheSpec], cache: TrackingCache,
                     final_keys: Collection[str], store: Store, progress: _Progress,
                     remote: RemoteLayers | None = None,
                     mounts: tuple[MountSources, Path, Path] | None = None) -> None:
    """Export to every ``--cache-to`` but ``type=inline`` (the build puts that one into
    the image); a failure fails the build unless ignore-error. ``mounts``: the build's
    cache mounts, their directory and a scratch directory (``cache-mounts=true``)."""
    for spec in specs:
        if spec.type == "inline":
            continue
        manifests = [cache.wanted(k, spec.mode) for k in final_keys]
        # an imported entry whose blob is neither here nor lazily at a source (never
        # hit) cannot be exported
        lazy = remote.sources if remote is not None else {}
        entries = [e for m in manifests for e in m.entries
                   if not e.layer.digest or Digest.parse(e.layer.digest) in lazy
                   or await store.stat(Digest.parse(e.layer.digest))]
        links: list[tuple[str, Digest]] = []
        try:
            mount_entries: list[MountEntry] = []
            if spec.cache_mounts and mounts is not None:
                sources, cache_dir, work = mounts
                mount_entries, links = await export_mounts(sources.used, cache_dir, store,
                                                           work)
                mount_entries += sources.carried([m.id for m in mount_entries])
            layers = CacheManifest.of(entries, mount_entries).descriptors()
            manifest = CacheManifest.of(entries, mount_entries,
                                        await layer_tocs(layers, store, remote))
            await export_cache(spec, manifest, store, remote)
        except (OSError, ValueError, ClientError, RegistryError, LazyLayerError) as exc:
            if not spec.ignore_error:
                raise CacheSpecError(f"--cache-to {spec}: cannot export the cache: {exc}") \
                    from exc
            progress.info(f"WARNING: --cache-to {spec}: cannot export the cache: {exc}")
            continue
        finally:
            for holder, digest in links:
                await store.unlink(holder, digest)
        steps = sum(1 for e in manifest.entries if e.instruction not in (FACTS, CLAMP))
        extra = f", {len(manifest.mounts)} cache mounts" if manifest.mounts else ""
        progress.info(f"exported cache to {spec}: {steps} steps{extra}")
