"""A build cache in memory (:class:`MemoryBuildCache`): entries last as long as the object.

For tests of code above the cache, and for builds that must leave no cache behind.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .entries import CachedLayer, miss_reason
from .manifest import CacheEntry, CacheManifest

__all__ = ["MemoryBuildCache"]


@dataclass(frozen=True, slots=True)
class _Step:
    entry: CacheEntry
    inputs: dict[str, Any] | None  # None: imported (not known)
    seq: int  # recording order: the latest one explains a miss


class MemoryBuildCache:
    """A :class:`builder.cache.BuildCacheBackend` in a dict; thread-safe (one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, _Step] = {}
        self._seq = 0

    def lookup(self, key: str) -> CachedLayer | None:
        with self._lock:
            step = self._steps.get(key)
        return None if step is None else step.entry.layer

    def record(self, key: str, parent: str, instruction: str, inputs: dict[str, Any],
               layer: CachedLayer) -> None:
        with self._lock:
            self._seq += 1
            self._steps[key] = _Step(CacheEntry(key, parent, instruction, layer),
                                     copy.deepcopy(inputs), self._seq)

    def explain(self, parent: str, instruction: str, inputs: dict[str, Any]) -> str:
        with self._lock:
            steps = list(self._steps.values())
        same_parent = any(s.entry.parent == parent for s in steps)
        ran = [s for s in steps if s.entry.parent == parent
               and s.entry.instruction == instruction]
        known = [s for s in ran if s.inputs is not None]
        latest = max(known, key=lambda s: s.seq) if known else None
        return miss_reason(None if latest is None else latest.inputs, same_parent, inputs,
                           imported=len(known) < len(ran),
                           previous_key=None if latest is None else latest.entry.key,
                           parent=parent, instruction=instruction)

    def export_manifest(self, keys: Collection[str] | None = None) -> CacheManifest:
        with self._lock:
            steps = dict(self._steps)
        wanted = steps if keys is None else {k: steps[k] for k in keys if k in steps}
        return CacheManifest.of(s.entry for s in wanted.values())

    def import_manifest(self, manifest: CacheManifest) -> int:
        added = 0
        with self._lock:
            for entry in manifest.entries:
                if entry.key not in self._steps:
                    self._seq += 1
                    self._steps[entry.key] = _Step(entry, None, self._seq)
                    added += 1
        return added
