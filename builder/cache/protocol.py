"""The seam between the build steps and the build cache: :class:`BuildCacheBackend`.

The steps (``builder.steps.common.layer_step``) and the build only use this protocol.
:class:`builder.cache.BuildCache` (SQLite, ``<storage>/builder/cache.db``) is the local
default; :class:`builder.cache.MemoryBuildCache` keeps entries in memory.
``tests/builder/test_cache_contract.py`` is the one suite every backend must pass.

Methods are synchronous and may block (a database, a file): the build calls them from
worker threads, never from the event loop; a backend is safe to use from several threads.
A remote cache (``--cache-from``/``--cache-to``) is not a backend of its own: as
BuildKit's remote cache importers and exporters do, it moves a :class:`CacheManifest`
between a registry (or a directory, or the image) and the local backend, before the build
(``import_manifest``) and after it (``export_manifest``); lookups stay local.

The cached layer's blob lives in the CAS, linked by holder ``cache:<key>``; a backend
does not check that it is there (the step does: an entry whose blob is gone is a miss).
The remembered hashes of build-context files are a separate, local concern
(``builder.context.FileHashStore``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from .entries import CachedLayer
from .manifest import CacheManifest

__all__ = ["BuildCacheBackend"]


class BuildCacheBackend(Protocol):
    """Where cached steps live. Contracts:

    - ``lookup(key)`` returns the layer last recorded (or imported) under ``key``,
      equal to what was recorded, or None when there is none.
    - ``record(key, parent, instruction, inputs, layer)`` stores the step (``key`` is
      ``step_key(parent, instruction, inputs)``), replacing an entry under the same key;
      a ``lookup`` from any thread sees it once ``record`` returns.
    - ``explain(parent, instruction, inputs)`` says in one sentence why that step has no
      usable entry, from the latest recorded entry with the same parent and instruction
      (:func:`builder.cache.miss_reason`'s sentences); it names changed inputs, nested
      ones as ``outer:inner``.
    - ``export_manifest(keys)`` returns the entries under ``keys`` (every entry: None)
      as a :class:`CacheManifest`; keys without an entry are left out.
    - ``import_manifest(manifest)`` adds the manifest's entries whose keys have no entry
      yet (a local entry wins: its blob is here) and returns how many it added; no blob is
      fetched. An imported entry is found by ``lookup`` and exported again like a
      recorded one; its inputs are not known, so ``explain`` does not compare them (it
      says so: :data:`builder.cache.entries.IMPORTED_MISS`).
    """

    def lookup(self, key: str) -> CachedLayer | None: ...

    def record(self, key: str, parent: str, instruction: str, inputs: dict[str, Any],
               layer: CachedLayer) -> None: ...

    def explain(self, parent: str, instruction: str, inputs: dict[str, Any]) -> str: ...

    def export_manifest(self, keys: Collection[str] | None = None) -> CacheManifest: ...

    def import_manifest(self, manifest: CacheManifest) -> int: ...
