"""Descriptors and platforms (image-spec ``descriptor.md``, ``image-index.md``)."""

from __future__ import annotations

import base64
import binascii
import platform as _host_platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cas import Digest

from .fields import (
    MAX_SIZE,
    InvalidObject,
    _digest,
    _extra,
    _int,
    _media_type,
    _obj,
    _put,
    _str,
    _str_map,
    _strs,
)
from .mediatypes import (
    DOCKER_FOREIGN_LAYER,
    OCI_LAYER_NONDISTRIBUTABLE,
)

__all__ = [
    "Descriptor",
    "Platform",
]


# Names that uname, Debian and others give an architecture, to the OCI (GOARCH) name.
_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "i386": "386",
                 "i686": "386", "armhf": "arm", "armel": "arm", "armv7l": "arm",
                 "armv6l": "arm"}
_OSES = frozenset({"linux", "windows", "darwin", "freebsd"})


@dataclass(frozen=True, slots=True)
class Platform:
    """``platform`` of an index entry (image-index.md), and the platform a build targets.

    Written as ``os/arch[/variant]`` (``linux/amd64``, ``linux/arm/v7``): :meth:`parse`
    reads that form, :meth:`host` gives this machine's, ``str()`` writes it.
    """

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

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os[/arch[/variant]]`` or a bare ``arch`` (then the OS is linux), as
        ``--platform`` takes it: lower-cased, architecture aliases normalised
        (``x86_64`` -> ``amd64``, ``aarch64`` -> ``arm64``), ``arm`` given its default
        variant (``v7``; ``v6`` for armel/armv6l) and ``arm64/v8`` written without its
        variant, as containerd normalises them. A bare OS takes the host's architecture.
        Raises ``ValueError``."""
        parts = text.strip().lower().split("/")
        if not parts[0] or len(parts) > 3 or any(not p for p in parts):
            raise ValueError(f"invalid platform {text!r}: expected os/arch[/variant]")
        if len(parts) == 1:
            if parts[0] in _OSES:
                host = cls.host()
                return cls(host.architecture, parts[0], variant=host.variant)
            parts = ["linux", parts[0]]
        arch = _ARCH_ALIASES.get(parts[1], parts[1])
        variant = parts[2] if len(parts) == 3 else None
        if arch == "arm" and not variant:
            variant = "v6" if parts[1] in ("armel", "armv6l") else "v7"
        if arch == "arm64" and variant == "v8":
            variant = None  # the normal form, as containerd normalises it
        return cls(arch, parts[0], variant=variant)

    @classmethod
    def host(cls) -> Platform:
        """This machine's platform (linux, its normalised architecture)."""
        machine = _host_platform.machine().lower()
        return cls.parse(f"linux/{machine or 'amd64'}")

    def __str__(self) -> str:
        """``os/arch[/variant]``, leaving out what is empty."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


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
