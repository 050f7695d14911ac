"""``--annotation``: OCI annotations for the built image, read as buildx reads them.

A value is ``[TYPES[PLATFORM]:]KEY=VALUE``; TYPES is one or more (comma-separated) of
``manifest`` (the default: the image manifest's ``annotations``), ``manifest-descriptor``
(the manifest's descriptor, in an OCI layout's or archive's ``index.json``), ``index``
and ``index-descriptor``. A multi-platform build's image index takes ``index`` (its own
``annotations``) and ``index-descriptor`` (its descriptor in ``index.json``), and each
``manifest-descriptor`` goes onto that platform's entry in the index; a one-platform build
writes no image index, so ``index`` and ``index-descriptor`` are refused there as BuildKit
refuses them for a single-platform export. A ``[os/arch]`` qualifier applies the
annotation only when the image is built for that platform (an index has none: there, as
in BuildKit, a qualified ``index`` annotation applies to nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["AnnotationError", "Annotations", "parse_annotations"]

_TYPES = ("manifest", "manifest-descriptor", "index", "index-descriptor")
# buildx's form: optional types and platform, then a key without spaces
_KEY = re.compile(r"^(?:([a-z,-]+)(?:\[([A-Za-z0-9_/.-]+)\])?:)?(\S+)$")


class AnnotationError(ValueError):
    """An ``--annotation`` value that cannot be used (says what to write instead)."""


@dataclass(frozen=True)
class Annotations:
    """Annotations for the image manifest and for its descriptor (and, in a multi-platform
    build, for the image index and its descriptor)."""

    manifest: dict[str, str] = field(default_factory=dict)
    descriptor: dict[str, str] = field(default_factory=dict)
    index: dict[str, str] = field(default_factory=dict)
    index_descriptor: dict[str, str] = field(default_factory=dict)


def _same_platform(wanted: str, platform: str) -> bool:
    a, b = wanted.split("/"), platform.split("/")
    if len(a) == 2 and len(b) == 3:  # linux/arm64 matches linux/arm64/v8
        b = b[:2]
    return a == b


def parse_annotations(values: tuple[str, ...] | list[str], platform: str, *,
                      index: bool = False) -> Annotations:
    """The ``--annotation`` values for an image built for ``platform`` (``os/arch[/v]``);
    ``index``: the build makes an image index (several platforms)."""
    out = Annotations()
    for text in values:
        key, eq, value = text.partition("=")
        if not eq:
            raise AnnotationError(f"{text!r}: expected KEY=VALUE (or manifest:KEY=VALUE)")
        m = _KEY.match(key)
        if m is None:
            raise AnnotationError(f"{text!r}: expected [TYPE[PLATFORM]:]KEY=VALUE, such as "
                                  "manifest:org.opencontainers.image.title=app")
        types, wanted, name = m.group(1), m.group(2), m.group(3)
        kinds = types.split(",") if types else ["manifest"]
        for kind in kinds:
            if kind not in _TYPES:
                raise AnnotationError(f"{text!r}: unknown annotation type {kind!r}: use "
                                      f"{', '.join(_TYPES)}")
            if kind.startswith("index") and not index:
                raise AnnotationError(f"{text!r}: index annotations not supported for single "
                                      "platform export: a build for one platform writes no "
                                      "image index; use manifest: or manifest-descriptor:, "
                                      "or build several platforms (--platform a,b)")
        for kind in kinds:
            if wanted and (kind.startswith("index") or not _same_platform(wanted, platform)):
                continue
            target = {"manifest": out.manifest, "manifest-descriptor": out.descriptor,
                      "index": out.index, "index-descriptor": out.index_descriptor}[kind]
            target[name] = value
    return out
