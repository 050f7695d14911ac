"""The build cache: step key -> the layer that step produced.

- :mod:`.protocol`: :class:`BuildCacheBackend`, the seam the steps use (lookup, record,
  explain, and the import/export pair a remote cache moves);
- :mod:`.entries`: :class:`CachedLayer`, :func:`step_key`, :func:`miss_reason`;
- :mod:`.manifest`: :class:`CacheManifest`, the entries as one portable document;
- :mod:`.sqlite`: :class:`BuildCache`, the local default (``<storage>/builder/cache.db``);
- :mod:`.memory`: :class:`MemoryBuildCache`;
- the remote cache (``--cache-to`` / ``--cache-from``): :mod:`.spec` (the flags' values),
  :mod:`.remote` (import and export), :mod:`.registry_cache` (in a registry, inline in an
  image), :mod:`.tracking` (the keys a build used), :mod:`.lazy` (layers left at their
  source until needed), :mod:`.mounts` (``RUN --mount=type=cache`` contents).
"""

from .entries import CLAMP, FACTS, CachedLayer, clamp_key, facts_key, miss_reason, step_key
from .manifest import CacheEntry, CacheManifest
from .memory import MemoryBuildCache
from .protocol import BuildCacheBackend
from .sqlite import BuildCache

__all__ = ["CLAMP", "FACTS", "BuildCache", "BuildCacheBackend", "CacheEntry", "CacheManifest",
           "CachedLayer", "MemoryBuildCache", "clamp_key", "facts_key", "miss_reason",
           "step_key"]
