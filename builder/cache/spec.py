"""``--cache-to`` / ``--cache-from`` values, as buildx reads them: :class:`CacheSpec`."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field

__all__ = ["CacheSpec", "CacheSpecError", "parse_cache_spec", "parse_cache_specs"]


class CacheSpecError(ValueError):
    """A ``--cache-to`` / ``--cache-from`` value that cannot be read."""


@dataclass(frozen=True)
class CacheSpec:
    type: str  # local | registry | inline
    where: str  # local: the directory; registry: the reference; inline: ""
    mode: str = "min"
    ignore_error: bool = False
    attrs: dict[str, str] = field(default_factory=dict)
    cache_mounts: bool = False  # cache-mounts=true: RUN --mount=type=cache contents too

    def __str__(self) -> str:
        if self.type == "inline":
            return "type=inline"
        name = "ref" if self.type == "registry" else "dest" if self.attrs.get("dest") else "src"
        return f"type={self.type},{name}={self.where}"


def _flag(attrs: dict[str, str], name: str, what: str) -> bool:
    value = attrs.get(name, "false").lower()
    if value not in ("true", "false"):
        raise CacheSpecError(f"{what}: {name} must be true or false")
    return value == "true"


def parse_cache_specs(text: str, *, export: bool) -> tuple[CacheSpec, ...]:
    """One ``--cache-to`` / ``--cache-from`` value, as buildx's ``ParseCacheEntry`` reads
    it: comma-separated fields (CSV: a field may be quoted), and when none of them is
    ``key=value``, each is an image reference (``--cache-from app:1,app:latest``, as
    ``docker build --cache-from`` takes a list)."""
    try:
        fields = next(csv.reader([text], strict=True)) if text.strip() else []
    except csv.Error as exc:
        raise CacheSpecError(f"{'--cache-to' if export else '--cache-from'} {text}: {exc}") \
            from None
    if len(fields) > 1 and not any("=" in f for f in fields):
        return tuple(parse_cache_spec(f, export=export) for f in fields if f.strip())
    return (parse_cache_spec(text, export=export),)


def parse_cache_spec(text: str, *, export: bool) -> CacheSpec:
    """One ``--cache-to`` (``export``) or ``--cache-from`` value, as buildx reads it
    (``IMAGE`` alone is ``type=registry,ref=IMAGE``)."""
    flag = "--cache-to" if export else "--cache-from"
    if "=" not in text and text.strip():
        # buildx: a bare value is a registry reference (`--cache-from app:latest`)
        return parse_cache_spec(f"type=registry,ref={text.strip()}", export=export)
    what = f"{flag} {text}"
    attrs: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise CacheSpecError(f"{what}: {part!r} is not key=value")
        attrs[key.strip()] = value.strip()
    kind = attrs.get("type", "")
    kinds = ("local", "registry", "inline") if export else ("local", "registry")
    if kind not in kinds:
        hint = "" if export or kind != "inline" else \
            " (an inline cache is read from its image: type=registry,ref=IMAGE)"
        raise CacheSpecError(f"{what}: type must be {' or '.join(kinds)}, not {kind!r}{hint}")
    mode = attrs.get("mode", "min")
    if mode not in ("min", "max"):
        raise CacheSpecError(f"{what}: mode must be min or max, not {mode!r}")
    ignore = _flag(attrs, "ignore-error", what)
    mounts = _flag(attrs, "cache-mounts", what)
    if kind == "inline":
        if mode == "max":
            raise CacheSpecError(f"{what}: an inline cache holds the image's own layers "
                                 "(mode=min); for mode=max use type=registry,ref=REF")
        if mounts:
            raise CacheSpecError(f"{what}: cache mounts cannot travel inside the image; "
                                 "use type=registry,ref=REF,cache-mounts=true")
        return CacheSpec(kind, "", mode, ignore, attrs)
    field_name = "ref" if kind == "registry" else "dest" if export else "src"
    where = attrs.get(field_name, "")
    if not where:
        raise CacheSpecError(f"{what}: type={kind} needs "
                             f"{field_name}={'HOST/REPO:TAG' if kind == 'registry' else 'DIR'}")
    if kind == "registry" and export:  # before the build, not when the cache is written
        from registry.client.refs import InvalidReference, parse_image_ref

        try:
            ref = parse_image_ref(where)
        except InvalidReference as exc:
            raise CacheSpecError(f"{what}: {exc}") from None
        if ref.digest is not None:
            raise CacheSpecError(f"{what}: a cache is written under a tag, not a digest: "
                                 "give ref=HOST/REPO:TAG")
    return CacheSpec(kind, where, mode, ignore, attrs, mounts)
