"""Typed field getters for OCI JSON documents, strict JSON decoding, :class:`InvalidObject`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from cas import Digest, InvalidDigest, UnsupportedDigestAlgorithm

__all__ = [
    "MAX_SIZE",
    "InvalidObject",
]


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
