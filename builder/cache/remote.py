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
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cas import Digest, Store
from registry.client.errors import ClientError
from registry.client.layouts import LayoutError, OciLayout
from registry.errors import RegistryError
from registry.oci import OCI_MANIFEST, Descriptor, Manifest

from .entries import FACTS, CachedLayer
from .lazy import LazyLayerError, MountSources, RemoteLayers
from .manifest import CacheEntry, CacheManifest, MountEntry
from .mounts import export_mounts
from .protocol import BuildCacheBackend

__all__ = ["ARTIFACT_TYPE", "CONFIG_MEDIA_TYPE", "CacheSpec", "CacheSpecError",
           "TrackingCache", "export_all", "export_cache", "import_all", "import_cache",
           "inline_manifest", "parse_cache_spec", "report_hits"]

CONFIG_MEDIA_TYPE = "application/vnd.pybuild.buildcache.config.v1+json"
ARTIFACT_TYPE = "application/vnd.pybuild.buildcache.v1"
_TAG = "latest"


class CacheSpecError(ValueError):
    """A ``--cache-to`` / ``--cache-from`` value that cannot be read."""


@dataclass(frozen=True)
class CacheSpec:
    type: str  # local | registry | inline
    where: str  # local: the directory; registry: the reference; inline: ""
    mode: str = "min"
    ignore_error: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    cache_mounts: bool = False  # cache-mounts=true: RUN --mount=type=cache contents too

    def __str__(self) -> str:
        if self.type == "inline":
            return "type=inline"
        name = "ref" if self.type == "registry" else "dest" if self.attrs.get("dest") else "src"
        return f"type={self.type},{name}={self.where}"


def _flag(attrs: dict[str, str], name: str, what: str) -> bool:
    value = attrs.get(name, "false").lower()
    if value not in ("true", "false"):
        raise CacheSpecError(f"{what}: {name} must be true or false")
    return value == "true"


def parse_cache_spec(text: str, *, export: bool) -> CacheSpec:
    """One ``--cache-to`` (``export``) or ``--cache-from`` value, as buildx reads it."""
    flag = "--cache-to" if export else "--cache-from"
    what = f"{flag} {text}"
    attrs: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise CacheSpecError(f"{what}: {part!r} is not key=value")
        attrs[key.strip()] = value.strip()
    kind = attrs.get("type", "")
    kinds = ("local", "registry", "inline") if export else ("local", "registry")
    if kind not in kinds:
        hint = "" if export or kind != "inline" else \
            " (an inline cache is read from its image: type=registry,ref=IMAGE)"
        raise CacheSpecError(f"{what}: type must be {' or '.join(kinds)}, not {kind!r}{hint}")
    mode = attrs.get("mode", "min")
    if mode not in ("min", "max"):
        raise CacheSpecError(f"{what}: mode must be min or max, not {mode!r}")
    ignore = _flag(attrs, "ignore-error", what)
    mounts = _flag(attrs, "cache-mounts", what)
    if kind == "inline":
        if mode == "max":
            raise CacheSpecError(f"{what}: an inline cache holds the image's own layers "
                                 "(mode=min); for mode=max use type=registry,ref=REF")
        if mounts:
            raise CacheSpecError(f"{what}: cache mounts cannot travel inside the image; "
                                 "use type=registry,ref=REF,cache-mounts=true")
        return CacheSpec(kind, "", mode, ignore, attrs)
    field_name = "ref" if kind == "registry" else "dest" if export else "src"
    where = attrs.get(field_name, "")
    if not where:
        raise CacheSpecError(f"{what}: type={kind} needs "
                             f"{field_name}={'HOST/REPO:TAG' if kind == 'registry' else 'DIR'}")
    return CacheSpec(kind, where, mode, ignore, attrs, mounts)


class TrackingCache:
    """A :class:`BuildCacheBackend` over another that notes the keys this build looked up
    or recorded (what ``mode=max`` exports)."""

    def __init__(self, inner: BuildCacheBackend) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self.keys: set[str] = set()
        self.origin: dict[str, CacheSpec] = {}  # imported key (not local before) -> source
        self.hits: dict[str, set[str]] = {}  # source -> imported keys the build used
        self.last_new: list[str] = []  # keys the last import added (not local before)

    def _note(self, key: str) -> None:
        with self._lock:
            self.keys.add(key)

    def note_hit(self, key: str) -> None:
        """A step used the entry ``key`` (counted per source for ``--explain``)."""
        spec = self.origin.get(key)
        if spec is not None:
            with self._lock:
                self.hits.setdefault(str(spec), set()).add(key)

    def lookup(self, key: str) -> CachedLayer | None:
        self._note(key)
        return self.inner.lookup(key)

    def record(self, key: str, parent: str, instruction: str, inputs: dict[str, Any],
               layer: CachedLayer) -> None:
        self._note(key)
        self.inner.record(key, parent, instruction, inputs, layer)

    def explain(self, parent: str, instruction: str, inputs: dict[str, Any]) -> str:
        return self.inner.explain(parent, instruction, inputs)

    def export_manifest(self, keys: Collection[str] | None = None) -> CacheManifest:
        return self.inner.export_manifest(keys)

    def import_manifest(self, manifest: CacheManifest) -> int:
        self.last_new = [e.key for e in manifest.entries if self.inner.lookup(e.key) is None]
        return self.inner.import_manifest(manifest)

    def wanted(self, final_key: str, mode: str) -> CacheManifest:
        """The entries ``mode`` exports: every key this build used (max), or the chain of
        parents from the final stage's key (min)."""
        used = self.inner.export_manifest(sorted(self.keys))
        if mode == "max":
            return used
        by_key = {e.key: e for e in used.entries}
        chain: list[CacheEntry] = []
        key = final_key
        while key in by_key and len(chain) <= len(by_key):
            chain.append(by_key[key])
            key = by_key[key].parent
        # the facts the chain's steps read from the layers below them
        parents = {f"{FACTS}:{k}" for e in chain for k in (e.key, e.parent)}
        chain += [e for e in used.entries if e.instruction == FACTS and e.parent in parents]
        return CacheManifest.of(chain)


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
    layout = OciLayout(Path(spec.where))
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
    blob stays at its source until it is needed (:mod:`.lazy`)."""
    for spec in specs:
        try:
            manifest = await import_cache(spec, cache, store)
        except (OSError, ValueError, ClientError, RegistryError) as exc:
            progress.info(f"WARNING: --cache-from {spec}: cannot import the cache: {exc}")
            continue
        for key in cache.last_new:
            cache.origin.setdefault(key, spec)
        if mounts is not None:
            for m in manifest.mounts:
                mounts.imported.setdefault(m.id, (spec, m))
        steps = sum(1 for e in manifest.entries if e.instruction != FACTS)
        extra = f", {len(manifest.mounts)} cache mounts" if manifest.mounts else ""
        progress.info(f"importing cache from {spec}: {steps} steps{extra}")


def report_hits(cache: TrackingCache, progress: _Progress) -> None:
    """``--explain``: which ``--cache-from`` each imported hit came from."""
    for source, keys in sorted(cache.hits.items()):
        progress.info(f"cache hits from {source}: {len(keys)} steps")


def inline_manifest(cache: TrackingCache, final_key: str) -> CacheManifest:
    """What ``--cache-to type=inline`` puts into the image's config: the final stage's
    chain (mode=min), whose layers are the image's own."""
    return cache.wanted(final_key, "min")


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
            manifest = CacheManifest.of(entries, mount_entries)
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
        steps = sum(1 for e in manifest.entries if e.instruction != FACTS)
        extra = f", {len(manifest.mounts)} cache mounts" if manifest.mounts else ""
        progress.info(f"exported cache to {spec}: {steps} steps{extra}")
