"""What a ``RUN`` step runs: :class:`RunSpec` and its ``--mount`` types.

The spec is pure data; it names paths *inside* the container. Host paths appear only where
the caller resolved them (a bind mount's ``root``, the secrets map).

``parse_mount`` reads one ``--mount=`` flag value the way BuildKit does
(https://docs.docker.com/reference/dockerfile/#run---mount): comma-separated ``key=value``
fields (CSV quoting allowed), ``type`` defaulting to ``bind``.
"""

from __future__ import annotations

import csv
import enum
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import InvalidMount

__all__ = [
    "BindMount",
    "CacheMount",
    "Mount",
    "Network",
    "RunSpec",
    "SecretMount",
    "Sharing",
    "SshMount",
    "TmpfsMount",
    "parse_mount",
]


class Network(enum.Enum):
    """``RUN --network``.

    ``DEFAULT`` is the host's network for builds here: pybuild has no bridge or CNI set-up,
    and BuildKit's own default for ``docker build`` is also the host network namespace.
    """

    DEFAULT = "default"
    NONE = "none"
    HOST = "host"

    @property
    def isolated(self) -> bool:
        return self is Network.NONE


class Sharing(enum.Enum):
    """How concurrent builds share one cache mount (``sharing=``)."""

    SHARED = "shared"  # everyone writes the same directory at once
    PRIVATE = "private"  # a busy cache gives the newcomer a fresh directory of its own
    LOCKED = "locked"  # a busy cache makes the newcomer wait


@dataclass(frozen=True)
class CacheMount:
    """``type=cache``: a directory that outlives the step and never enters a layer."""

    target: str
    id: str = ""  # BuildKit: defaults to the target
    sharing: Sharing = Sharing.SHARED
    readonly: bool = False
    uid: int = 0
    gid: int = 0
    mode: int = 0o755

    @property
    def cache_id(self) -> str:
        return self.id or self.target


@dataclass(frozen=True)
class BindMount:
    """``type=bind``: ``source`` (a path inside ``root``) appears at ``target``.

    ``root`` is the host directory the caller resolved ``from=`` to (a stage's rootfs, an
    image, or the build context when ``from`` is absent). Read-only unless ``rw``; with
    ``rw`` writes land in a throw-away layer, never in ``root`` (as BuildKit does).
    """

    target: str
    source: str = "/"
    from_ref: str | None = None
    root: Path | None = None
    rw: bool = False

    def resolved(self, root: Path) -> BindMount:
        return replace(self, root=root)


@dataclass(frozen=True)
class SecretMount:
    """``type=secret``: a secret as a file at ``target`` and/or in variable ``env``.

    The file lives on a tmpfs for the step only; it never reaches a layer or a disk.
    """

    id: str
    target: str | None = None
    env: str | None = None
    required: bool = False
    mode: int = 0o400
    uid: int = 0
    gid: int = 0

    @property
    def file_target(self) -> str | None:
        if self.target is not None:
            return self.target
        # BuildKit: with env= and no target, the secret is only a variable.
        return None if self.env else f"/run/secrets/{self.id}"


@dataclass(frozen=True)
class TmpfsMount:
    """``type=tmpfs``: an empty memory filesystem; ``size`` in bytes (None: kernel default)."""

    target: str
    size: int | None = None


@dataclass(frozen=True)
class SshMount:
    """``type=ssh``: an SSH agent socket at ``target``, forwarded to the host agent
    ``socket`` (the caller resolves ``id`` to it; None: no agent was given).

    The container sees a socket of its own (owner ``uid:gid``, ``mode``), not the host's:
    every connection to it is relayed to the host agent for the step's duration only.
    """

    id: str = "default"
    target: str = ""  # "" -> /run/buildkit/ssh_agent.<N> (N counts the step's ssh mounts)
    required: bool = False
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    socket: Path | None = None

    def resolved(self, socket: Path | None) -> SshMount:
        return replace(self, socket=socket)


Mount = CacheMount | BindMount | SecretMount | TmpfsMount | SshMount


@dataclass(frozen=True)
class RunSpec:
    """One ``RUN`` step, ready to execute.

    - ``argv``: the command, already shell-wrapped by the caller (``/bin/sh -c ...``).
    - ``env``: ``NAME=value`` strings; the process gets exactly these, nothing else.
    - ``user``: ``name``, ``uid``, ``uid:gid``, ``name:group`` ...; empty means root.
    - ``workdir``: absolute; created (owned by root, 0755) if missing, and that stays in
      the step's changes, as Docker does.
    - ``secrets``: secret id -> host file holding its value, or the value itself.
    - ``hostname`` is the step's UTS hostname (BuildKit's default name); it and
      ``extra_hosts`` (``(name, ip)`` pairs) are added to the generated /etc/hosts.
    - ``pipes``: name -> content of read-only executable files at ``/dev/pipes/<name>``
      (where BuildKit puts a heredoc script that starts with ``#!``).
    - ``insecure`` (``RUN --security=insecure``): every capability, as ``docker run
      --privileged``; the default is Docker's default capability set.
    """

    argv: tuple[str, ...]
    env: tuple[str, ...] = ()
    user: str = ""
    workdir: str = "/"
    network: Network = Network.DEFAULT
    mounts: tuple[Mount, ...] = ()
    secrets: Mapping[str, Path | bytes] = field(default_factory=dict)
    hostname: str = "buildkitsandbox"
    extra_hosts: tuple[tuple[str, str], ...] = ()
    pipes: Mapping[str, bytes] = field(default_factory=dict)
    insecure: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", tuple(self.env))
        object.__setattr__(self, "mounts", tuple(self.mounts))
        object.__setattr__(self, "extra_hosts", tuple(self.extra_hosts))
        object.__setattr__(
            self, "secrets",
            {k: v if isinstance(v, bytes) else Path(v) for k, v in dict(self.secrets).items()}
        )
        object.__setattr__(self, "pipes", dict(self.pipes))
        if not self.argv:
            raise ValueError("RunSpec.argv is empty: RUN needs a command")
        for name in self.pipes:
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(f"RunSpec.pipes name {name!r} must be a plain file name")
        if not posixpath.isabs(self.workdir):
            raise ValueError(f"RunSpec.workdir {self.workdir!r} must be absolute")
        for entry in self.env:
            if "=" not in entry:
                raise ValueError(f"RunSpec.env entry {entry!r} is not NAME=value")

    __hash__ = None  # type: ignore[assignment]  # secrets and pipes are dicts


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``1024`` -> bytes (binary units, as Docker's RAMInBytes)."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    unit = m.group(2).lower()
    scale = 1024 ** ("kmgtp".find(unit) + 1) if unit else 1
    return int(float(m.group(1)) * scale)


def parse_mount(text: str) -> Mount:
    """Parse one ``--mount=`` value into a mount; raises :class:`InvalidMount`."""
    fields = next(csv.reader([text]), [])
    kv: dict[str, str | None] = {}
    for item in fields:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not key:
            raise InvalidMount(text, "empty field")
        kv[key] = value if eq else None
    kind = (kv.pop("type", None) or "bind").lower()
    for alias in ("dst", "destination"):
        if alias in kv:
            kv["target"] = kv.pop(alias)
    if "src" in kv:
        kv["source"] = kv.pop("src")
    try:
        if kind == "cache":
            return _cache(text, kv)
        if kind == "bind":
            return _bind(text, kv)
        if kind == "secret":
            return _secret(text, kv)
        if kind == "tmpfs":
            return _tmpfs(text, kv)
        if kind == "ssh":
            return _ssh(text, kv)
    except ValueError as exc:
        if isinstance(exc, InvalidMount):
            raise
        raise InvalidMount(text, str(exc)) from exc
    raise InvalidMount(text, f"unknown type {kind!r} (use bind, cache, tmpfs, secret or ssh)")


def _flag(value: str | None) -> bool:
    if value is None or value.lower() in ("true", "1", ""):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _take(text: str, kv: dict[str, str | None], allowed: set[str]) -> None:
    unknown = sorted(set(kv) - allowed)
    if unknown:
        raise InvalidMount(
            text, f"unexpected key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _target(text: str, kv: dict[str, str | None], *, required: bool = True) -> str | None:
    target = kv.get("target")
    if not target:
        if required:
            raise InvalidMount(text, "target= is required")
        return None
    if not target.startswith("/"):
        target = "/" + target  # BuildKit resolves relative targets against /
    return posixpath.normpath(target)


def _readonly(kv: dict[str, str | None]) -> bool:
    if "ro" in kv or "readonly" in kv:
        return _flag(kv.get("ro", kv.get("readonly")))
    if "rw" in kv or "readwrite" in kv:
        return not _flag(kv.get("rw", kv.get("readwrite")))
    return False


def _cache(text: str, kv: dict[str, str | None]) -> CacheMount:
    _take(text, kv, {"target", "id", "sharing", "ro", "readonly", "rw", "readwrite",
                     "uid", "gid", "mode"})
    target = _target(text, kv)
    assert target is not None
    sharing = (kv.get("sharing") or "shared").lower()
    try:
        share = Sharing(sharing)
    except ValueError:
        raise InvalidMount(text, f"sharing={sharing} (use shared, private or locked)") from None
    return CacheMount(
        target=target,
        id=kv.get("id") or "",
        sharing=share,
        readonly=_readonly(kv),
        uid=int(kv.get("uid") or 0),
        gid=int(kv.get("gid") or 0),
        mode=int(kv.get("mode") or "755", 8),
    )


def _bind(text: str, kv: dict[str, str | None]) -> BindMount:
    _take(text, kv, {"target", "source", "from", "ro", "readonly", "rw", "readwrite"})
    target = _target(text, kv)
    assert target is not None
    given = {"ro", "readonly", "rw", "readwrite"} & set(kv)
    rw = not _readonly(kv) if given else False  # bind mounts are read-only by default
    return BindMount(
        target=target,
        source=posixpath.normpath("/" + (kv.get("source") or "")),
        from_ref=kv.get("from") or None,
        rw=rw,
    )


def _secret(text: str, kv: dict[str, str | None]) -> SecretMount:
    _take(text, kv, {"target", "id", "env", "required", "mode", "uid", "gid"})
    target = _target(text, kv, required=False)
    secret_id = kv.get("id") or (posixpath.basename(target) if target else "")
    if not secret_id:
        raise InvalidMount(text, "id= is required (or a target= to take it from)")
    return SecretMount(
        id=secret_id,
        target=target,
        env=kv.get("env") or None,
        required=_flag(kv["required"]) if "required" in kv else False,
        mode=int(kv.get("mode") or "400", 8),
        uid=int(kv.get("uid") or 0),
        gid=int(kv.get("gid") or 0),
    )


def _tmpfs(text: str, kv: dict[str, str | None]) -> TmpfsMount:
    _take(text, kv, {"target", "size"})
    target = _target(text, kv)
    assert target is not None
    size = kv.get("size")
    return TmpfsMount(target=target, size=parse_size(size) if size else None)


def _ssh(text: str, kv: dict[str, str | None]) -> SshMount:
    _take(text, kv, {"target", "id", "required", "mode", "uid", "gid"})
    return SshMount(
        id=kv.get("id") or "default",
        target=_target(text, kv, required=False) or "",
        required=_flag(kv["required"]) if "required" in kv else False,
        mode=int(kv.get("mode") or "600", 8),
        uid=int(kv.get("uid") or 0),
        gid=int(kv.get("gid") or 0),
    )
