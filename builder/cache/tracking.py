"""The build's view of its cache: :class:`TrackingCache` notes which keys the build used
(what ``mode=max`` exports) and where imported entries came from (``--explain``)."""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import Any

from .entries import CLAMP, FACTS, CachedLayer
from .manifest import CacheEntry, CacheManifest
from .protocol import BuildCacheBackend
from .spec import CacheSpec

__all__ = ["TrackingCache"]


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
        # a stage key after a COPY --link step -> (that step's entry, the key before it)
        self.links: dict[str, tuple[str, str]] = {}

    def _note(self, key: str) -> None:
        with self._lock:
            self.keys.add(key)

    def note_hit(self, key: str) -> None:
        """A step used the entry ``key`` (counted per source for ``--explain``)."""
        spec = self.origin.get(key)
        if spec is not None:
            with self._lock:
                self.hits.setdefault(str(spec), set()).add(key)

    def note_link(self, stage_key: str, entry: str, before: str) -> None:
        """A ``--link`` step (entry ``entry``, whose key leaves its parent out) made the
        stage key ``stage_key`` from ``before``: mode=min follows the chain through it."""
        with self._lock:
            self.links[stage_key] = (entry, before)

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
        parents from the final stage's key (min), with the facts its steps read and their
        layers clamped to this build's epoch."""
        used = self.inner.export_manifest(sorted(self.keys))
        if mode == "max":
            return used
        by_key = {e.key: e for e in used.entries}
        chain: list[CacheEntry] = []
        stage_keys = set()
        key = final_key
        while len(chain) <= len(by_key) and key not in stage_keys:
            stage_keys.add(key)
            if key in self.links:  # a --link step: its entry, then the key before it
                entry, key = self.links[key]
                if entry in by_key:
                    chain.append(by_key[entry])
            elif key in by_key:
                chain.append(by_key[key])
                key = by_key[key].parent
            else:
                break
        # the facts the chain's steps read from the layers below them
        parents = {f"{FACTS}:{k}" for k in stage_keys | {e.parent for e in chain}}
        parents |= {f"{CLAMP}:{e.layer.digest}" for e in chain if e.layer.digest}
        chain += [e for e in used.entries
                  if e.instruction in (FACTS, CLAMP) and e.parent in parents]
        return CacheManifest.of(chain)
