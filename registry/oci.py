"""OCI objects as typed, frozen dataclasses: descriptors, manifests, indexes, image configs.

Covers the OCI image spec (``descriptor.md``, ``manifest.md``, ``image-index.md``,
``config.md``) and Docker's schema 2 manifest and manifest list, which share the OCI
shapes under other media types.

Contract for every class:

- ``from_json(doc)`` takes the decoded JSON object, checks the spec's required fields and
  types and raises :class:`InvalidObject` (a ``ValueError``) naming the field path and what
  was expected. ``parse(raw)`` does the same from bytes.
- ``to_json()`` returns a JSON-ready dict. Fields this module does not model (vendor
  extensions, future spec fields) are kept in ``extra`` and written back, so
  ``X.from_json(d).to_json() == d`` for any valid ``d``. (The registry stores manifests
  byte-exact regardless; these objects are for validation and for building images.)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cas import Digest, InvalidDigest, UnsupportedDigestAlgorithm

__all__ = [
    "ARTIFACT_EMPTY_JSON",
    "DOCKER_CONFIG",
    "DOCKER_FOREIGN_LAYER",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V1",
    "DOCKER_MANIFEST_V1_SIGNED",
    "EMPTY_JSON",
    "EMPTY_JSON_DIGEST",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_SIZE",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "ContainerConfig",
    "Descriptor",
    "History",
    "ImageConfig",
    "Index",
    "InvalidObject",
    "Manifest",
    "Platform",
    "RootFS",
    "parse_manifest",
]

# --- media types -------------------------------------------------------------------------
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = OCI_LAYER_NONDISTRIBUTABLE + "+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = OCI_LAYER_NONDISTRIBUTABLE + "+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# The empty descriptor's content (image spec "Guidance for an Empty Descriptor").
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = Digest.of(EMPTY_JSON)
ARTIFACT_EMPTY_JSON = OCI_EMPTY

# The largest size a descriptor may state: Go clients (and the spec's int64) read no more.
MAX_SIZE = (1 << 63) - 1

# RFC 6838 media type (type "/" subtype, restricted-name characters), parameters refused.
_MEDIA_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)


class InvalidObject(ValueError):
    """A JSON document that is not a valid OCI object; the message names the field."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


# --- typed getters ------------------------------------------------------------------------
def _obj(doc: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidObject(where, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _str(doc: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidObject(f"{where}.{key}", "is required")
        return None
    if not isinstance(value, str):
        raise InvalidObject(f"{where}.{key}", f"expected a string, got {type(value).__name__}")
    return value


def _int(doc: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> int | None:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidObject(f"{where}.{key}", "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidObject(f"{where}.{key}", f"expected an integer, got {value!r}")
    return value


def _bool(doc: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidObject(f"{where}.{key}", f"expected true or false, got {value!r}")
    return value


def _strs(doc: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidObject(f"{where}.{key}", "expected an array of strings")
    return tuple(value)


def _str_map(doc: Mapping[str, Any], key: str, where: str) -> dict[str, str] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidObject(f"{where}.{key}", "expected an object of string values")
    return dict(value)


def _media_type(doc: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = _str(doc, key, where, required=required)
    if value is not None and not _MEDIA_TYPE.match(value):
        raise InvalidObject(f"{where}.{key}", f"{value!r} is not a media type (type/subtype)")
    return value


def _digest(doc: Mapping[str, Any], key: str, where: str) -> Digest:
    text = _str(doc, key, where, required=True)
    assert text is not None
    try:
        return Digest.parse(text)
    except (InvalidDigest, UnsupportedDigestAlgorithm) as exc:
        raise InvalidObject(f"{where}.{key}", str(exc)) from exc


def _extra(doc: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in known}


def _put(out: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        out[key] = list(value) if isinstance(value, tuple) else value


def _load(raw: bytes | str, what: str, *, unique_keys: bool = False) -> Any:
    """Decode strict JSON (RFC 8259): ``NaN``, ``Infinity`` and ``-Infinity`` are refused
    (Python's json reads them, Go's cannot), and so is nesting too deep to decode.
    ``unique_keys`` also refuses an object that repeats a key: parsers disagree on which
    value wins (Go's encoding/json and Python's take the last, others the first or fail).
    """
    def constant(name: str) -> Any:
        raise InvalidObject(what, f"{name} is not valid JSON (numbers must be finite)")

    try:
        return json.loads(
            raw,
            parse_constant=constant,
            object_pairs_hook=(lambda pairs: _unique(pairs, what)) if unique_keys else None,
        )
    except InvalidObject:
        raise
    except RecursionError:
        raise InvalidObject(what, "nested too deeply to be a manifest") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidObject(what, f"not valid JSON: {exc}") from exc


def _unique(pairs: list[tuple[str, Any]], what: str) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidObject(what, f"key {key[:64]!r} appears twice in one object")
            seen.add(key)
    return doc


# --- descriptors --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Platform:
    """``platform`` of an index entry (image-index.md)."""

    architecture: str
    os: str
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None
    variant: str | None = None
    features: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    _KNOWN = frozenset({"architecture", "os", "os.version", "os.features", "variant", "features"})

    @classmethod
    def from_json(cls, doc: Any, where: str = "platform") -> Platform:
        d = _obj(doc, where)
        arch = _str(d, "architecture", where, required=True)
        os_ = _str(d, "os", where, required=True)
        assert arch is not None and os_ is not None
        return cls(
            architecture=arch,
            os=os_,
            os_version=_str(d, "os.version", where),
            os_features=_strs(d, "os.features", where),
            variant=_str(d, "variant", where),
            features=_strs(d, "features", where),
            extra=_extra(d, cls._KNOWN),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        _put(out, "os.version", self.os_version)
        _put(out, "os.features", self.os_features)
        _put(out, "variant", self.variant)
        _put(out, "features", self.features)
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A content descriptor (descriptor.md): what a blob is, where it is, how big it is.

    ``data`` holds the embedded content (decoded from base64); when present it is checked
    against ``size`` and ``digest``.
    """

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] | None = None
    annotations: dict[str, str] | None = None
    data: bytes | None = None
    artifact_type: str | None = None
    platform: Platform | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    _KNOWN = frozenset(
        {"mediaType", "digest", "size", "urls", "annotations", "data", "artifactType", "platform"}
    )

    @classmethod
    def from_json(cls, doc: Any, where: str = "descriptor") -> Descriptor:
        d = _obj(doc, where)
        media_type = _media_type(d, "mediaType", where, required=True)
        digest = _digest(d, "digest", where)
        size = _int(d, "size", where, required=True)
        assert media_type is not None and size is not None
        if not 0 <= size <= MAX_SIZE:
            raise InvalidObject(f"{where}.size", f"must be between 0 and {MAX_SIZE}, got {size}")
        data = None
        data_text = _str(d, "data", where)
        if data_text is not None:
            try:
                data = base64.b64decode(data_text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise InvalidObject(f"{where}.data", f"not valid base64: {exc}") from exc
            if len(data) != size:
                raise InvalidObject(f"{where}.data", f"holds {len(data)} bytes, size says {size}")
            if Digest.of(data, digest.algorithm) != digest:
                raise InvalidObject(f"{where}.data", f"does not hash to {digest}")
        platform = d.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            urls=_strs(d, "urls", where),
            annotations=_str_map(d, "annotations", where),
            data=data,
            artifact_type=_media_type(d, "artifactType", where, required=False),
            platform=None if platform is None else Platform.from_json(platform, f"{where}.platform"),
            extra=_extra(d, cls._KNOWN),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        _put(out, "urls", self.urls)
        _put(out, "annotations", self.annotations)
        if self.data is not None:
            out["data"] = base64.b64encode(self.data).decode()
        _put(out, "artifactType", self.artifact_type)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        out.update(self.extra)
        return out

    @property
    def nondistributable(self) -> bool:
        """A layer that registries need not hold (OCI nondistributable, Docker foreign)."""
        return self.media_type.startswith(OCI_LAYER_NONDISTRIBUTABLE) or (
            self.media_type == DOCKER_FOREIGN_LAYER
        )


def _descriptors(d: Mapping[str, Any], key: str, where: str) -> tuple[Descriptor, ...]:
    value = d.get(key)
    if not isinstance(value, list):
        raise InvalidObject(f"{where}.{key}", "is required and must be an array of descriptors")
    return tuple(Descriptor.from_json(v, f"{where}.{key}[{i}]") for i, v in enumerate(value))


def _schema_version(d: Mapping[str, Any], where: str) -> None:
    version = _int(d, "schemaVersion", where, required=True)
    if version != 2:
        raise InvalidObject(f"{where}.schemaVersion", f"must be 2, got {version}")


# --- manifests ----------------------------------------------------------------------------
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


# --- image config -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """The ``config`` member of an image config: how to run a container (config.md)."""

    user: str | None = None
    exposed_ports: dict[str, Any] | None = None
    env: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    volumes: dict[str, Any] | None = None
    working_dir: str | None = None
    labels: dict[str, str] | None = None
    stop_signal: str | None = None
    args_escaped: bool | None = None
    shell: tuple[str, ...] | None = None
    healthcheck: dict[str, Any] | None = None
    on_build: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # (json key, attribute, kind)
    _FIELDS = (
        ("User", "user", "str"),
        ("ExposedPorts", "exposed_ports", "obj"),
        ("Env", "env", "strs"),
        ("Entrypoint", "entrypoint", "strs"),
        ("Cmd", "cmd", "strs"),
        ("Volumes", "volumes", "obj"),
        ("WorkingDir", "working_dir", "str"),
        ("Labels", "labels", "strmap"),
        ("StopSignal", "stop_signal", "str"),
        ("ArgsEscaped", "args_escaped", "bool"),
        ("Shell", "shell", "strs"),
        ("Healthcheck", "healthcheck", "obj"),
        ("OnBuild", "on_build", "strs"),
    )

    @classmethod
    def from_json(cls, doc: Any, where: str = "config.config") -> ContainerConfig:
        d = _obj(doc, where)
        kwargs: dict[str, Any] = {}
        for key, attr, kind in cls._FIELDS:
            if kind == "str":
                kwargs[attr] = _str(d, key, where)
            elif kind == "strs":
                kwargs[attr] = _strs(d, key, where)
            elif kind == "strmap":
                kwargs[attr] = _str_map(d, key, where)
            elif kind == "bool":
                kwargs[attr] = _bool(d, key, where)
            else:
                value = d.get(key)
                if value is not None:
                    value = dict(_obj(value, f"{where}.{key}"))
                kwargs[attr] = value
        known = frozenset(k for k, _, _ in cls._FIELDS)
        return cls(**kwargs, extra=_extra(d, known))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, attr, _ in self._FIELDS:
            _put(out, key, getattr(self, attr))
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class RootFS:
    """``rootfs``: the uncompressed layer digests, in order (config.md)."""

    diff_ids: tuple[Digest, ...]
    type: str = "layers"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, doc: Any, where: str = "config.rootfs") -> RootFS:
        d = _obj(doc, where)
        kind = _str(d, "type", where, required=True)
        if kind != "layers":
            raise InvalidObject(f"{where}.type", f"must be 'layers', got {kind!r}")
        ids = d.get("diff_ids")
        if not isinstance(ids, list):
            raise InvalidObject(f"{where}.diff_ids", "is required and must be an array")
        diff_ids = []
        for i, text in enumerate(ids):
            try:
                diff_ids.append(Digest.parse(text))
            except (InvalidDigest, UnsupportedDigestAlgorithm) as exc:
                raise InvalidObject(f"{where}.diff_ids[{i}]", str(exc)) from exc
        return cls(tuple(diff_ids), kind, _extra(d, frozenset({"type", "diff_ids"})))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "diff_ids": [str(d) for d in self.diff_ids]}
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class History:
    """One ``history`` entry: how a layer (or an empty step) was made."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    _KEYS = ("created", "created_by", "author", "comment")

    @classmethod
    def from_json(cls, doc: Any, where: str = "config.history[]") -> History:
        d = _obj(doc, where)
        return cls(
            **{k: _str(d, k, where) for k in cls._KEYS},
            empty_layer=_bool(d, "empty_layer", where),
            extra=_extra(d, frozenset((*cls._KEYS, "empty_layer"))),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self._KEYS:
            _put(out, key, getattr(self, key))
        _put(out, "empty_layer", self.empty_layer)
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """An image configuration (config.md; Docker's ``container.image.v1`` is a superset)."""

    architecture: str
    os: str
    rootfs: RootFS
    created: str | None = None
    author: str | None = None
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] | None = None
    config: ContainerConfig | None = None
    history: tuple[History, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    _KNOWN = frozenset(
        {
            "architecture", "os", "rootfs", "created", "author", "variant",
            "os.version", "os.features", "config", "history",
        }
    )

    @classmethod
    def from_json(cls, doc: Any, where: str = "config") -> ImageConfig:
        d = _obj(doc, where)
        arch = _str(d, "architecture", where, required=True)
        os_ = _str(d, "os", where, required=True)
        assert arch is not None and os_ is not None
        if "rootfs" not in d:
            raise InvalidObject(f"{where}.rootfs", "is required")
        history = d.get("history")
        if history is not None and not isinstance(history, list):
            raise InvalidObject(f"{where}.history", "must be an array")
        config = d.get("config")
        return cls(
            architecture=arch,
            os=os_,
            rootfs=RootFS.from_json(d["rootfs"], f"{where}.rootfs"),
            created=_str(d, "created", where),
            author=_str(d, "author", where),
            variant=_str(d, "variant", where),
            os_version=_str(d, "os.version", where),
            os_features=_strs(d, "os.features", where),
            config=None if config is None else ContainerConfig.from_json(config, f"{where}.config"),
            history=None
            if history is None
            else tuple(History.from_json(h, f"{where}.history[{i}]") for i, h in enumerate(history)),
            extra=_extra(d, cls._KNOWN),
        )

    @classmethod
    def parse(cls, raw: bytes | str) -> ImageConfig:
        return cls.from_json(_load(raw, "config"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        _put(out, "created", self.created)
        _put(out, "author", self.author)
        out["architecture"] = self.architecture
        out["os"] = self.os
        _put(out, "os.version", self.os_version)
        _put(out, "os.features", self.os_features)
        _put(out, "variant", self.variant)
        if self.config is not None:
            out["config"] = self.config.to_json()
        out["rootfs"] = self.rootfs.to_json()
        if self.history is not None:
            out["history"] = [h.to_json() for h in self.history]
        out.update(self.extra)
        return out

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()
