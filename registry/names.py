"""Repository names, tags and references, validated by the spec's grammar.

From the OCI Distribution Spec ("Pulling manifests")::

    <name>  [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*)*
    <tag>   [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}

A name is at most 255 characters here (the limit Docker clients impose on host + name).
The grammar alone already refuses ``..``, empty components and leading/trailing slashes;
:func:`check_raw_path` additionally refuses percent-encoding anywhere in a ``/v2/`` path,
because no valid name, tag or digest needs it and decoded ``%2e%2e`` / ``%2f`` are how path
tricks get past routers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cas import Digest, InvalidDigest, UnsupportedDigestAlgorithm

from .errors import DIGEST_INVALID, NAME_INVALID, TAG_INVALID, RegistryError

__all__ = [
    "MAX_NAME_LENGTH",
    "NAME_PATTERN",
    "TAG_PATTERN",
    "Reference",
    "check_raw_path",
    "is_valid_name",
    "is_valid_tag",
    "parse_digest",
    "parse_pull_reference",
    "parse_reference",
    "validate_name",
    "validate_tag",
]

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"{_COMPONENT}(?:/{_COMPONENT})*"
TAG_PATTERN = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
MAX_NAME_LENGTH = 255

_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_TAG_RE = re.compile(rf"^{TAG_PATTERN}$")


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and _NAME_RE.match(name) is not None


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.match(tag) is not None


def validate_name(name: str) -> str:
    """Return ``name`` or raise NAME_INVALID saying what the grammar wants."""
    if not is_valid_name(name):
        raise NAME_INVALID(
            f"invalid repository name {name!r}: use lowercase path components of "
            "[a-z0-9] joined by '.', '_', '__' or '-', separated by single '/', "
            f"at most {MAX_NAME_LENGTH} characters",
            detail={"name": name},
        )
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` or raise TAG_INVALID (HTTP 400)."""
    if not is_valid_tag(tag):
        raise TAG_INVALID(
            f"invalid tag {tag!r}: a tag matches [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}",
            detail={"tag": tag},
        )
    return tag


def parse_digest(text: str) -> Digest:
    """Parse a digest from a URL or body; DIGEST_INVALID (400) if malformed or unsupported."""
    try:
        return Digest.parse(text)
    except (InvalidDigest, UnsupportedDigestAlgorithm) as exc:
        raise DIGEST_INVALID(str(exc), detail={"digest": text}) from exc


@dataclass(frozen=True, slots=True)
class Reference:
    """A manifest reference: exactly one of ``tag`` and ``digest`` is set."""

    tag: str | None = None
    digest: Digest | None = None

    def __str__(self) -> str:
        return self.tag if self.tag is not None else str(self.digest)


def parse_reference(text: str) -> Reference:
    """``<tag-or-digest>``: a digest if it contains ':', else a tag.

    A ':' can never appear in a tag, so the split is unambiguous; a malformed digest raises
    DIGEST_INVALID and a malformed tag TAG_INVALID.
    """
    if ":" in text:
        return Reference(digest=parse_digest(text))
    return Reference(tag=validate_tag(text))


def parse_pull_reference(text: str) -> Reference | None:
    """``parse_reference`` for GET and HEAD: ``None`` for a malformed tag.

    The distribution spec lets a manifest pull fail only with 404 (endpoint end-3): a
    string that is not a valid tag names no manifest, so it is not found rather than a
    bad request. A malformed digest still raises DIGEST_INVALID, as for pushes.
    """
    if ":" not in text and not is_valid_tag(text):
        return None
    return parse_reference(text)


def check_raw_path(raw_path: str) -> None:
    """Refuse ``/v2/`` paths that try to smuggle components past the router.

    ``raw_path`` is the request target as sent (before percent-decoding and before
    dot-segment removal). Refused with NAME_INVALID: any ``%`` escape, ``.`` or ``..``
    components, empty components (``//``) and backslashes.
    """
    path = raw_path.split("?", 1)[0] if "?" in raw_path else raw_path
    if "%" not in path and "/." not in path and "//" not in path and "\\" not in path:
        return  # the common case, decided without splitting
    if "%" in path or "\\" in path:
        raise _path_error(path, "percent-encoding and backslashes are not allowed")
    parts = path.split("/")
    # parts[0] is "" (leading slash); a single trailing "" is allowed (e.g. "/v2/" and
    # ".../blobs/uploads/").
    inner = parts[1:-1] if parts[-1] == "" else parts[1:]
    for part in inner:
        if part in ("", ".", ".."):
            raise _path_error(path, "empty, '.' and '..' path components are not allowed")


def _path_error(path: str, why: str) -> RegistryError:
    return NAME_INVALID(f"invalid request path {path!r}: {why}", detail={"path": path})
