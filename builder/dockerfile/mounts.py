"""``RUN --mount=...`` specifications -> typed :class:`Mount` objects.

A spec is a CSV list of ``key=value`` fields (and a few bare flags: ``ro``, ``rw``,
``readonly``, ``readwrite``, ``required``), e.g.
``type=cache,target=/root/.cache,sharing=locked``. The rules follow Docker's
``RUN --mount`` reference and BuildKit:

- ``type`` is bind (default), cache, tmpfs, secret or ssh;
- bind and secret/ssh mounts are read-only unless ``rw``; cache and tmpfs are writable;
- ``size`` only for tmpfs; ``mode``/``uid``/``gid`` only for cache, secret and ssh;
  ``required`` only for secret and ssh; ``sharing`` (shared|private|locked) only for cache;
- a secret needs an ``id``, ``source`` or ``target``, and cannot have ``from``;
- ``from`` cannot use variables (name an alias stage instead).

Errors are :class:`MountError` with a one-line message; the instruction stage adds the
file and line.
"""

from __future__ import annotations

import csv
import enum
from collections.abc import Callable
from dataclasses import dataclass

from cas.units import parse_size

from .errors import Problem, with_suggestion

__all__ = ["Mount", "MountError", "MountType", "parse_mount"]


class MountError(ValueError):
    def __init__(self, problem: Problem | str) -> None:
        self.problem = problem if isinstance(problem, Problem) else Problem(problem)
        super().__init__(str(self.problem))


class MountType(enum.StrEnum):
    BIND = "bind"
    CACHE = "cache"
    TMPFS = "tmpfs"
    SECRET = "secret"
    SSH = "ssh"


_SHARING = ("shared", "private", "locked")
_KEYS = (
    "type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro",
    "readwrite", "rw", "required", "size", "id", "sharing", "mode", "uid", "gid", "env",
)


@dataclass(frozen=True)
class Mount:
    """One mount of a RUN step. ``target`` is where it appears inside the container."""

    type: MountType = MountType.BIND
    target: str = ""
    source: str = ""
    from_: str = ""
    readonly: bool = True
    id: str = ""
    sharing: str = ""
    required: bool = False
    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None


def _bool(key: str, value: str) -> bool:
    # Go's strconv.ParseBool spellings
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise MountError(f"invalid value for {key}: {value}")


def _ram_bytes(value: str) -> int:
    """``64m``, ``1g``, ``512``: binary units, as Docker's --tmpfs size."""
    try:
        return parse_size(value)
    except ValueError:
        raise MountError(f"invalid value for size: {value}") from None


def _uint(key: str, value: str, base: int) -> int:
    try:
        n = int(value, base)
    except ValueError:
        raise MountError(f"invalid value {value} for {key}") from None
    if not 0 <= n < 2**32:
        raise MountError(f"invalid value {value} for {key}")
    return n


def parse_mount(spec: str, expand: Callable[[str], str] | None = lambda v: v) -> Mount | None:
    """Parse one ``--mount`` value; ``expand`` resolves variables in each field value.

    With ``expand=None`` (values not known yet) only the keys and the ``from`` rule are
    checked and None is returned.
    """
    try:
        fields = next(csv.reader([spec]), [])
    except csv.Error as exc:
        raise MountError(f"failed to parse csv mounts: {exc}") from None
    kind = MountType.BIND
    values: dict[str, object] = {}
    ro_auto = True
    for field in fields:
        key, has_value, value = field.partition("=")
        key = key.lower()
        if expand is None:
            if key not in _KEYS:
                raise MountError(with_suggestion(
                    f"unexpected key {key!r} in {field!r}", key, _KEYS))
            if key == "from" and "$" in value[:-1]:
                raise MountError(Problem("'from' doesn't support variable expansion",
                                         "define an alias stage instead"))
            continue
        if not has_value:
            if key in ("readonly", "ro"):
                values["readonly"], ro_auto = True, False
            elif key in ("readwrite", "rw"):
                values["readonly"], ro_auto = False, False
            elif key == "required":
                if kind not in (MountType.SECRET, MountType.SSH):
                    raise MountError(f"unexpected key 'required' for mount type '{kind}'")
                values["required"] = True
            else:
                raise MountError(Problem(f"invalid field {field!r}",
                                         "mount fields must be key=value pairs"))
            continue
        if key == "from" and "$" in value[:-1]:
            raise MountError(Problem("'from' doesn't support variable expansion",
                                     "define an alias stage instead"))
        value = expand(value)
        if key == "type":
            try:
                kind = MountType(value.lower())
            except ValueError:
                raise MountError(with_suggestion(
                    f"unsupported mount type {value!r}", value, list(MountType))) from None
        elif key == "from":
            values["from_"] = value
        elif key in ("source", "src"):
            values["source"] = value
        elif key in ("target", "dst", "destination"):
            values["target"] = value
        elif key in ("readonly", "ro"):
            values["readonly"], ro_auto = _bool(key, value), False
        elif key in ("readwrite", "rw"):
            values["readonly"], ro_auto = not _bool(key, value), False
        elif key == "required":
            if kind not in (MountType.SECRET, MountType.SSH):
                raise MountError(f"unexpected key 'required' for mount type '{kind}'")
            values["required"] = _bool(key, value)
        elif key == "size":
            if kind is not MountType.TMPFS:
                raise MountError(f"unexpected key 'size' for mount type '{kind}'")
            values["size"] = _ram_bytes(value)
        elif key == "id":
            values["id"] = value
        elif key == "sharing":
            if value.lower() not in _SHARING:
                raise MountError(with_suggestion(
                    f"unsupported sharing value {value!r}", value, _SHARING))
            values["sharing"] = value.lower()
        elif key == "mode":
            values["mode"] = _uint("mode", value, 8)
        elif key in ("uid", "gid"):
            values[key] = _uint(key, value, 10)
        elif key == "env":
            values["env"] = value
        else:
            raise MountError(with_suggestion(f"unexpected key {key!r} in {field!r}", key, _KEYS))
    if expand is None:
        return None
    if kind not in (MountType.SECRET, MountType.SSH, MountType.CACHE):
        for key in ("mode", "uid", "gid"):
            if key in values:
                raise MountError(f"{key} not allowed for '{kind}' type mounts")
    if ro_auto:
        values["readonly"] = kind not in (MountType.CACHE, MountType.TMPFS)
    if kind is MountType.SECRET:
        if values.get("from_"):
            raise MountError("secret mount should not have a from")
        if values.get("sharing"):
            raise MountError("secret mount should not define sharing")
        if not (values.get("source") or values.get("target") or values.get("id")):
            raise MountError(Problem("invalid secret mount",
                                     "give one of id, source or target"))
        if values.get("source") and values.get("id"):
            raise MountError("both source and id can't be set")
    if values.get("sharing") and kind is not MountType.CACHE:
        raise MountError(f"invalid cache sharing set for {kind} mount")
    return Mount(type=kind, **values)  # type: ignore[arg-type]
