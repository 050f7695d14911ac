"""Moving the build cache between machines: ``--cache-to`` / ``--cache-from``.

BuildKit's syntax: ``type=local,dest=DIR[,mode=min|max]`` / ``type=local,src=DIR`` and
``type=registry,ref=HOST/REPO:TAG[,mode=min|max]`` (both ways). The cache travels as an
OCI artifact, in an OCI image layout or in a registry (:mod:`.registry_cache`): a
manifest whose config is the :class:`CacheManifest` document (:data:`CONFIG_MEDIA_TYPE`)
and whose layers are the entries' layer blobs (:meth:`CacheManifest.descriptors`).

Import reads the manifest and its config only and adds the entries to the local cache
(``import_manifest``); a layer blob is copied or pulled into the store (linked
``cache:<key>``) when a step's lookup hits its entry (:class:`TrackingCache`), so the
entries that miss cost nothing. ``mode=min`` exports the steps of the final stage's key
chain, ``mode=max`` every step this build looked up or ran.

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
from cas.holders import cache_holder
from registry.client.errors import ClientError
from registry.client.layouts import LayoutError, OciLayout
from registry.errors import RegistryError
from registry.oci import OCI_MANIFEST, Descriptor, Manifest

from .entries import CachedLayer
from .manifest import CacheEntry, CacheManifest
from .protocol import BuildCacheBackend

__all__ = ["ARTIFACT_TYPE", "CONFIG_MEDIA_TYPE", "CacheSpec", "CacheSpecError",
           "TrackingCache", "export_all", "export_cache", "import_all", "import_cache",
           "parse_cache_spec", "report_hits"]

CONFIG_MEDIA_TYPE = "application/vnd.pybuild.buildcache.config.v1+json"
ARTIFACT_TYPE = "application/vnd.pybuild.buildcache.v1"
_TAG = "latest"


class CacheSpecError(ValueError):
    """A ``--cache-to`` / ``--cache-from`` value that cannot be read."""


@dataclass(frozen=True)
class CacheSpec:
    type: str  # local | registry
    where: str  # local: the directory; registry: the reference
    mode: str = "min"
    ignore_error: bool = False
    attrs: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        name = "ref" if self.type == "registry" else "dest" if self.attrs.get("dest") else "src"
        return f"type={self.type},{name}={self.where}"


def parse_cache_spec(text: str, *, export: bool) -> CacheSpec:
    """One ``--cache-to`` (``export``) or ``--cache-from`` value, as buildx reads it."""
    flag = "--cache-to" if export else "--cache-from"
    attrs: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise CacheSpecError(f"{flag} {text}: {part!r} is not key=value")
        attrs[key.strip()] = value.strip()
    kind = attrs.get("type", "")
    if kind not in ("local", "registry"):
        raise CacheSpecError(f"{flag} {text}: type must be local or registry, not {kind!r}")
    field_name = "ref" if kind == "registry" else "dest" if export else "src"
    where = attrs.get(field_name, "")
    if not where:
        raise CacheSpecError(f"{flag} {text}: type={kind} needs "
                             f"{field_name}={'HOST/REPO:TAG' if kind == 'registry' else 'DIR'}")
    mode = attrs.get("mode", "min")
    if mode not in ("min", "max"):
        raise CacheSpecError(f"{flag} {text}: mode must be min or max, not {mode!r}")
    ignore = attrs.get("ignore-error", "false").lower()
    if ignore not in ("true", "false"):
        raise CacheSpecError(f"{flag} {text}: ignore-error must be true or false")
    return CacheSpec(kind, where, mode, ignore == "true", attrs)


class TrackingCache:
    """A :class:`BuildCacheBackend` over another that notes the keys this build looked up
    or recorded (what ``mode=max`` exports)."""

    def __init__(self, inner: BuildCacheBackend) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self.keys: set[str] = set()
        self.origin: dict[str, CacheSpec] = {}  # imported key (not local before) -> source
        self.hits: dict[str, set[str]] = {}  # source -> imported keys found by lookup
        self.last_new: list[str] = []  # keys the last import added (not local before)
        self._fetching = threading.Lock()
        self._store: Store | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, store: Store, loop: asyncio.AbstractEventLoop) -> None:
        """Where an imported hit's layer blob goes, and the loop the store runs on."""
        self._store, self._loop = store, loop

    def _note(self, key: str) -> None:
        with self._lock:
            self.keys.add(key)

    def lookup(self, key: str) -> CachedLayer | None:
        self._note(key)
        found = self.inner.lookup(key)
        spec = self.origin.get(key)
        if found is not None and spec is not None:
            if found.digest and not self._fetch(spec, key, found):
                return None
            with self._lock:
                self.hits.setdefault(str(spec), set()).add(key)
        return found

    def _fetch(self, spec: CacheSpec, key: str, layer: CachedLayer) -> bool:
        """Bring an imported hit's layer blob into the store (a worker thread waits for
        the copy or pull on the build's loop); False: it could not be had (a miss)."""
        store, loop = self._store, self._loop
        if store is None or loop is None:
            return False
        try:
            asyncio.get_running_loop()
            return False  # on the loop itself: cannot wait for it
        except RuntimeError:
            pass
        with self._fetching:
            try:
                return asyncio.run_coroutine_threadsafe(
                    fetch_layer(spec, key, layer, store), loop).result()
            except (OSError, ValueError, ClientError, RegistryError):
                return False

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
        return CacheManifest.of(chain)


def _artifact(manifest: CacheManifest) -> tuple[bytes, Manifest]:
    config = manifest.to_json()
    desc = Descriptor(CONFIG_MEDIA_TYPE, Digest.of(config), len(config))
    return config, Manifest(desc, tuple(manifest.descriptors()), media_type=OCI_MANIFEST,
                            artifact_type=ARTIFACT_TYPE)


async def export_cache(spec: CacheSpec, manifest: CacheManifest, store: Store) -> int:
    """Write ``manifest`` and its blobs where ``spec`` says; returns the blob count."""
    config, art = _artifact(manifest)
    if spec.type == "registry":
        from .registry_cache import push_cache

        await push_cache(spec.where, config, art, store)
        return len(art.layers)
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
    ``cache``; returns the manifest read. LayoutError / ValueError: it cannot be read."""
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


async def fetch_layer(spec: CacheSpec, key: str, layer: CachedLayer, store: Store) -> bool:
    """Copy (local) or pull (registry) the layer blob of the imported entry ``key`` into
    ``store``, linked ``cache:<key>``; True once it is there."""
    desc = Descriptor(layer.media_type, Digest.parse(layer.digest), layer.size)
    if await store.stat(desc.digest) is None:
        if spec.type == "registry":
            from .registry_cache import pull_layer

            await pull_layer(spec.where, desc, cache_holder(key), store)
        else:
            await OciLayout(Path(spec.where)).import_blob(store, desc, link=cache_holder(key))
    else:
        await store.link(cache_holder(key), desc.digest)
    return True


class _Progress(Protocol):
    def info(self, text: str) -> None: ...


async def import_all(specs: Collection[CacheSpec], cache: TrackingCache, store: Store,
                     progress: _Progress) -> None:
    """Import every ``--cache-from``; one that cannot be read is a warning line. A layer
    blob is fetched when a lookup hits its entry (:meth:`TrackingCache.lookup`)."""
    cache.bind(store, asyncio.get_running_loop())
    for spec in specs:
        try:
            manifest = await import_cache(spec, cache, store)
        except (OSError, ValueError, ClientError, RegistryError) as exc:
            progress.info(f"WARNING: --cache-from {spec}: cannot import the cache: {exc}")
            continue
        for key in cache.last_new:
            cache.origin.setdefault(key, spec)
        progress.info(f"importing cache from {spec}: {len(manifest.entries)} steps")


def report_hits(cache: TrackingCache, progress: _Progress) -> None:
    """``--explain``: which ``--cache-from`` each imported hit came from."""
    for source, keys in sorted(cache.hits.items()):
        progress.info(f"cache hits from {source}: {len(keys)} steps")


async def export_all(specs: Collection[CacheSpec], cache: TrackingCache,
                     final_keys: Collection[str], store: Store, progress: _Progress) -> None:
    """Export to every ``--cache-to``; a failure fails the build unless ignore-error."""
    for spec in specs:
        manifests = [cache.wanted(k, spec.mode) for k in final_keys]
        # an imported entry whose blob was never fetched (not hit) cannot be exported
        manifest = CacheManifest.of([e for m in manifests for e in m.entries
                                     if not e.layer.digest
                                     or await store.stat(Digest.parse(e.layer.digest))])
        try:
            await export_cache(spec, manifest, store)
        except (OSError, ValueError, ClientError, RegistryError) as exc:
            if not spec.ignore_error:
                raise CacheSpecError(f"--cache-to {spec}: cannot export the cache: {exc}") \
                    from exc
            progress.info(f"WARNING: --cache-to {spec}: cannot export the cache: {exc}")
            continue
        progress.info(f"exported cache to {spec}: {len(manifest.entries)} steps")
