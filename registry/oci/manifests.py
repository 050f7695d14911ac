"""Image manifests and indexes, and deciding a pushed manifest's type (``manifest.md``, ``image-index.md``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .descriptors import (
    Descriptor,
    _descriptors,
    _schema_version,
)
from .fields import (
    InvalidObject,
    _extra,
    _load,
    _media_type,
    _obj,
    _put,
    _str_map,
)
from .mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V1,
    DOCKER_MANIFEST_V1_SIGNED,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)

__all__ = [
    "Index",
    "Manifest",
    "parse_manifest",
]


@dataclass(frozen=True, slots=True)
class Manifest:
    """An image manifest: OCI (manifest.md) or Docker schema 2 (``media_type`` tells)."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str | None = OCI_MANIFEST
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    _KNOWN = frozenset(
        {"schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations"}
    )

    @classmethod
    def from_json(cls, doc: Any, where: str = "manifest") -> Manifest:
        d = _obj(doc, where)
        _schema_version(d, where)
        media_type = _media_type(d, "mediaType", where, required=False)
        if media_type is not None and media_type not in MANIFEST_TYPES:
            raise InvalidObject(f"{where}.mediaType", f"{media_type!r} is not an image manifest")
        if "config" not in d:
            raise InvalidObject(f"{where}.config", "is required")
        subject = d.get("subject")
        return cls(
            config=Descriptor.from_json(d["config"], f"{where}.config"),
            layers=_descriptors(d, "layers", where),
            media_type=media_type,
            artifact_type=_media_type(d, "artifactType", where, required=False),
            subject=None if subject is None else Descriptor.from_json(subject, f"{where}.subject"),
            annotations=_str_map(d, "annotations", where),
            extra=_extra(d, cls._KNOWN),
        )

    @classmethod
    def parse(cls, raw: bytes | str) -> Manifest:
        return cls.from_json(_load(raw, "manifest"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2}
        _put(out, "mediaType", self.media_type)
        _put(out, "artifactType", self.artifact_type)
        out["config"] = self.config.to_json()
        out["layers"] = [layer.to_json() for layer in self.layers]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        _put(out, "annotations", self.annotations)
        out.update(self.extra)
        return out

    def to_bytes(self) -> bytes:
        """Canonical-ish serialisation for pushing (compact, key order as to_json)."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    def references(self) -> tuple[Descriptor, ...]:
        """The blobs the manifest needs in the repository (config, then layers)."""
        return (self.config, *self.layers)

    def effective_artifact_type(self) -> str:
        """``artifactType``, else the config's media type (spec "Listing Referrers")."""
        return self.artifact_type or self.config.media_type


@dataclass(frozen=True, slots=True)
class Index:
    """An image index: OCI (image-index.md) or Docker manifest list."""

    manifests: tuple[Descriptor, ...]
    media_type: str | None = OCI_INDEX
    artifact_type: str | None = None
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    _KNOWN = frozenset(
        {"schemaVersion", "mediaType", "artifactType", "manifests", "subject", "annotations"}
    )

    @classmethod
    def from_json(cls, doc: Any, where: str = "index") -> Index:
        d = _obj(doc, where)
        _schema_version(d, where)
        media_type = _media_type(d, "mediaType", where, required=False)
        if media_type is not None and media_type not in INDEX_TYPES:
            raise InvalidObject(f"{where}.mediaType", f"{media_type!r} is not an image index")
        subject = d.get("subject")
        return cls(
            manifests=_descriptors(d, "manifests", where),
            media_type=media_type,
            artifact_type=_media_type(d, "artifactType", where, required=False),
            subject=None if subject is None else Descriptor.from_json(subject, f"{where}.subject"),
            annotations=_str_map(d, "annotations", where),
            extra=_extra(d, cls._KNOWN),
        )

    @classmethod
    def parse(cls, raw: bytes | str) -> Index:
        return cls.from_json(_load(raw, "index"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2}
        _put(out, "mediaType", self.media_type)
        _put(out, "artifactType", self.artifact_type)
        out["manifests"] = [m.to_json() for m in self.manifests]
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        _put(out, "annotations", self.annotations)
        out.update(self.extra)
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    def effective_artifact_type(self) -> str | None:
        """``artifactType`` or nothing (an index has no config to fall back to)."""
        return self.artifact_type


def parse_manifest(raw: bytes, content_type: str | None) -> tuple[str, Manifest | Index]:
    """Decode a pushed manifest and decide its media type.

    The type is the body's ``mediaType`` if present, else ``content_type`` (parameters
    ignored), else guessed from the shape (``manifests`` -> OCI index, else OCI manifest).
    A body ``mediaType`` that disagrees with a manifest ``content_type`` is refused, as are
    Docker schema 1 manifests (deprecated and unsigned-unverifiable) and unknown types.
    The JSON must be strict: no ``NaN``/``Infinity`` and no key repeated in an object.
    Returns ``(media_type, object)``; raises :class:`InvalidObject`.
    """
    doc = _obj(_load(raw, "manifest", unique_keys=True), "manifest")
    header = (content_type or "").split(";", 1)[0].strip().lower() or None
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise InvalidObject("manifest.mediaType", "expected a string")
    if header in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED) or doc.get("schemaVersion") == 1:
        raise InvalidObject(
            "manifest", "Docker schema 1 manifests are not supported: push schema 2 or OCI"
        )
    known = MANIFEST_TYPES | INDEX_TYPES
    if body_type is not None and header in known and header != body_type:
        raise InvalidObject(
            "manifest.mediaType",
            f"body says {body_type!r} but Content-Type says {header!r}; they must agree",
        )
    media_type = body_type or (header if header in known else None)
    if media_type is None:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in MANIFEST_TYPES:
        obj: Manifest | Index = Manifest.from_json(doc)
    elif media_type in INDEX_TYPES:
        obj = Index.from_json(doc)
    else:
        raise InvalidObject("manifest.mediaType", f"unsupported manifest media type {media_type!r}")
    if media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST) and body_type is None:
        raise InvalidObject("manifest.mediaType", f"is required for {media_type}")
    return media_type, obj
