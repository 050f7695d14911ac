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
- ``type=inline``: the document in the built image's config, as a top-level field
  :data:`INLINE_KEY` (as BuildKit's ``moby.buildkit.cache.v0``: not a label, so an image
  built ``FROM`` it does not inherit it), its layers being the image's own.

Importing adds entries without fetching blobs; :mod:`builder.cache.remote` copies or
pulls an imported entry's blob into the store when a lookup hits it. A hit on an entry
whose blob is not in the local store (and cannot be fetched) counts as a miss.

Document (JSON, entries sorted by key)::

    {"mediaType": "application/vnd.pybuild.buildcache.manifest.v1+json",
     "entries": [{"key": "<hex sha256>", "parent": "<parent key>",
                  "instruction": "<expanded instruction>",
                  "layer": {"digest": "sha256:...", "size": 123, "media_type": "...",
                            "diff_id": "sha256:...", "created": "2026-..."}}],
     "mounts": [{"id": "<cache mount id>", "layer": {...}}],
     "tocs": {"sha256:<layer>": {"digest": "sha256:...", "size": 123}}}

``mounts`` (``--cache-to ...,cache-mounts=true``) holds the contents of ``RUN
--mount=type=cache`` directories, one layer blob per cache id. An entry whose
instruction is :data:`builder.cache.entries.FACTS` has no layer: it holds what a step read
from the layers below it (a COPY's resolved destination, ``--chown`` ids). An entry whose
instruction is :data:`builder.cache.entries.CLAMP` maps a step's layer and an epoch to
that layer with its times clamped (:mod:`builder.steps.clamp`). A layer with ``"epoch":
N`` (in ``type=inline`` entries, whose layers are the image's) has its times clamped to N
already: only a build with that epoch uses it.

``tocs`` maps a gzip layer to its table of contents (:mod:`builder.lazyfs.toc`), a blob
of the artifact too: a runner that imports the cache fetches it only when a RUN step
must read the layer's files (:mod:`builder.lazyfs.layers`), then only the files read.

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

__all__ = ["INLINE_KEY", "MEDIA_TYPE", "CacheEntry", "CacheManifest", "MountEntry"]

MEDIA_TYPE = "application/vnd.pybuild.buildcache.manifest.v1+json"
INLINE_KEY = "dev.pybuild.cache.v1"


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
class MountEntry:
    """The contents of a ``RUN --mount=type=cache`` directory (cache ``id``) as a layer."""

    id: str
    layer: CachedLayer

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "layer": self.layer.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MountEntry:
        layer = CachedLayer.from_dict(d["layer"])
        Digest.parse(layer.digest)
        Digest.parse(layer.diff_id)
        if not isinstance(d["id"], str) or not d["id"]:
            raise ValueError("a cache mount's id must be a non-empty string")
        return cls(d["id"], layer)


@dataclass(frozen=True, slots=True)
class CacheManifest:
    """Cache entries, sorted by key, at most one per key; cache mounts, sorted by id."""

    entries: tuple[CacheEntry, ...] = ()
    mounts: tuple[MountEntry, ...] = ()
    tocs: tuple[tuple[str, Descriptor], ...] = ()  # (layer digest, its TOC), sorted

    @classmethod
    def of(cls, entries: Iterable[CacheEntry], mounts: Iterable[MountEntry] = (),
           tocs: dict[str, Descriptor] | None = None) -> CacheManifest:
        by_key = {e.key: e for e in entries}
        by_id = {m.id: m for m in mounts}
        layers = {e.layer.digest for e in by_key.values()} | {m.layer.digest
                                                              for m in by_id.values()}
        return cls(tuple(by_key[k] for k in sorted(by_key)),
                   tuple(by_id[i] for i in sorted(by_id)),
                   tuple((k, v) for k, v in sorted((tocs or {}).items()) if k in layers))

    def descriptors(self) -> list[Descriptor]:
        """The layer blobs the entries and the mounts name, once each, in order (the
        layers of a registry cache artifact)."""
        seen: dict[str, Descriptor] = {}
        for layer in [e.layer for e in self.entries] + [m.layer for m in self.mounts]:
            if layer.digest and layer.digest not in seen:
                seen[layer.digest] = Descriptor(layer.media_type,
                                                Digest.parse(layer.digest), layer.size)
        for _, toc in self.tocs:
            seen.setdefault(str(toc.digest), toc)
        return list(seen.values())

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": MEDIA_TYPE,
                               "entries": [e.to_dict() for e in self.entries]}
        if self.mounts:
            doc["mounts"] = [m.to_dict() for m in self.mounts]
        if self.tocs:
            doc["tocs"] = {k: {"digest": str(v.digest), "size": v.size} for k, v in self.tocs}
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_doc(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> CacheManifest:
        """Parse a cache manifest; ValueError says what is wrong with it."""
        try:
            return cls.from_doc(json.loads(data))
        except json.JSONDecodeError as exc:
            raise ValueError(f"malformed cache manifest: {exc}") from exc

    @classmethod
    def from_doc(cls, doc: Any) -> CacheManifest:
        """A cache manifest from its parsed JSON (as :data:`INLINE_KEY` holds it)."""
        try:
            if not isinstance(doc, dict) or doc.get("mediaType") != MEDIA_TYPE:
                raise ValueError(f"not a pybuild cache manifest (mediaType {MEDIA_TYPE})")
            return cls.of((CacheEntry.from_dict(e) for e in doc["entries"]),
                          (MountEntry.from_dict(m) for m in doc.get("mounts", ())),
                          _tocs(doc.get("tocs", {})))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed cache manifest: missing or mistyped {exc}") from exc


def _tocs(doc: Any) -> dict[str, Descriptor]:
    from ..lazyfs.toc import TOC_MEDIA_TYPE

    if not isinstance(doc, dict):
        raise ValueError("malformed cache manifest: tocs must be an object")
    out = {}
    for layer, toc in doc.items():
        Digest.parse(layer)
        size = toc["size"]
        if type(size) is not int or not 0 < size <= 1 << 30:
            raise ValueError(f"malformed cache manifest: the TOC of {layer} has size {size!r}")
        out[layer] = Descriptor(TOC_MEDIA_TYPE, Digest.parse(toc["digest"]), size)
    return out
