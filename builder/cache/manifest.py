"""The cache manifest: a build cache's entries as one document that can travel.

It is what :meth:`BuildCacheBackend.export_manifest` gives and
:meth:`BuildCacheBackend.import_manifest` takes, the shape BuildKit's remote cache
exporters and importers exchange (its ``cacheconfig``): step keys mapped to layer
descriptors. Nothing in it is read from or written to a place here; the transports
(``--cache-to`` / ``--cache-from`` ``type=registry|local|inline``) wrap it:

- ``type=registry``: an OCI artifact manifest whose config blob is this document
  (:data:`MEDIA_TYPE`) and whose layers are :meth:`CacheManifest.descriptors`, so that
  any OCI registry keeps the layer blobs alive and a pull can fetch them one by one;
- ``type=local``: an OCI image layout holding the same artifact;
- ``type=inline`` (not implemented yet): the document in the built image's config (under
  the label :data:`INLINE_LABEL`), its layers being the image's own.

Importing adds entries without fetching blobs; :mod:`builder.cache.remote` copies or
pulls an imported entry's blob into the store when a lookup hits it. A hit on an entry
whose blob is not in the local store (and cannot be fetched) counts as a miss.

Document (JSON, entries sorted by key)::

    {"mediaType": "application/vnd.pybuild.buildcache.manifest.v1+json",
     "entries": [{"key": "<hex sha256>", "parent": "<parent key>",
                  "instruction": "<expanded instruction>",
                  "layer": {"digest": "sha256:...", "size": 123, "media_type": "...",
                            "diff_id": "sha256:...", "created": "2026-..."}}]}

A step's inputs (file hashes, environment, build arguments) are left out: the key covers
them, and they can hold values that should not leave the machine. ``--explain`` therefore
names changed inputs only for entries recorded by a local build.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cas import Digest
from registry.oci import Descriptor

from .entries import CachedLayer

__all__ = ["INLINE_LABEL", "MEDIA_TYPE", "CacheEntry", "CacheManifest"]

MEDIA_TYPE = "application/vnd.pybuild.buildcache.manifest.v1+json"
INLINE_LABEL = "dev.pybuild.cache.manifest"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached step: its key, its parent's key and expanded instruction, and the
    layer it produced."""

    key: str
    parent: str
    instruction: str
    layer: CachedLayer

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "parent": self.parent, "instruction": self.instruction,
                "layer": self.layer.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CacheEntry:
        key = d["key"]
        if not (isinstance(key, str) and len(key) == 64
                and all(c in "0123456789abcdef" for c in key)):
            raise ValueError(f"a cache entry's key must be a hex sha256, not {key!r}")
        layer = CachedLayer.from_dict(d["layer"])
        if layer.digest:
            Digest.parse(layer.digest)
            Digest.parse(layer.diff_id)
        return cls(key, str(d["parent"]), str(d["instruction"]), layer)


@dataclass(frozen=True, slots=True)
class CacheManifest:
    """Cache entries, sorted by key, at most one per key."""

    entries: tuple[CacheEntry, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[CacheEntry]) -> CacheManifest:
        by_key = {e.key: e for e in entries}
        return cls(tuple(by_key[k] for k in sorted(by_key)))

    def descriptors(self) -> list[Descriptor]:
        """The layer blobs the entries name, once each, in entry order (the layers of
        a registry cache artifact)."""
        seen: dict[str, Descriptor] = {}
        for e in self.entries:
            if e.layer.digest and e.layer.digest not in seen:
                seen[e.layer.digest] = Descriptor(e.layer.media_type,
                                                  Digest.parse(e.layer.digest), e.layer.size)
        return list(seen.values())

    def to_json(self) -> bytes:
        doc = {"mediaType": MEDIA_TYPE, "entries": [e.to_dict() for e in self.entries]}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> CacheManifest:
        """Parse a cache manifest; ValueError says what is wrong with it."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("mediaType") != MEDIA_TYPE:
                raise ValueError(f"not a pybuild cache manifest (mediaType {MEDIA_TYPE})")
            return cls.of(CacheEntry.from_dict(e) for e in doc["entries"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed cache manifest: missing or mistyped {exc}") from exc
