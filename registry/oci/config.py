"""The image configuration (``config.md``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cas import Digest, InvalidDigest, UnsupportedDigestAlgorithm

from .fields import (
    InvalidObject,
    _bool,
    _extra,
    _load,
    _obj,
    _put,
    _str,
    _str_map,
    _strs,
)

__all__ = [
    "ContainerConfig",
    "History",
    "ImageConfig",
    "RootFS",
]


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
