"""What a ``RUN`` step runs: :class:`RunSpec` and its ``--mount`` types.

The spec is pure data; it names paths *inside* the container. Host paths appear only where
the caller resolved them (a bind mount's ``root``, the secrets map).

A ``--mount=`` flag is read by the Dockerfile front end
(:func:`builder.dockerfile.mounts.parse_mount`, BuildKit's rules);
:func:`sandbox_mount` turns what it gives into the mount type the sandbox runs, with
BuildKit's defaults filled in (absolute targets, a secret's id from its target, modes).
"""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..dockerfile.mounts import Mount as MountFlag
from ..dockerfile.mounts import MountType
from .errors import InvalidMount

__all__ = [
    "BindMount",
    "CacheMount",
    "Network",
    "RunSpec",
    "SandboxMount",
    "SecretMount",
    "Sharing",
    "SshMount",
    "TmpfsMount",
    "sandbox_mount",
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
    """``type=cache``: a directory that outlives the step and never enters a layer.

    As in BuildKit, a cache is known by its ``id`` *and* what it starts from: an empty
    directory made with ``uid``/``gid``/``mode`` when any of them is given (``base``
    ``uid=U,gid=G,mode=M``), the ``source`` directory of the stage or image ``from_ref``
    names (``base`` identifies that content; the caller resolves ``seed``, the host
    directory a new cache starts as a copy of), or else a plain empty directory. The same
    ``id`` with another start is another cache (:attr:`cache_id`).
    """

    target: str
    id: str = ""  # BuildKit: defaults to the target
    sharing: Sharing = Sharing.SHARED
    readonly: bool = False
    uid: int = 0
    gid: int = 0
    mode: int = 0o755
    source: str = "/"
    from_ref: str | None = None
    base: str = ""
    seed: Path | None = None

    @property
    def cache_id(self) -> str:
        """The cache's identity: its id, and its start when that is not an empty
        directory (what the cache directory, its lock and a remote cache's export go by)."""
        name = self.id or self.target
        return f"{name} ({self.base})" if self.base else name


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


SandboxMount = CacheMount | BindMount | SecretMount | TmpfsMount | SshMount


def _clean(path: str) -> str:
    """Go's ``path.Clean`` (Python's normpath keeps a leading ``//``)."""
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("/") else cleaned


def sandbox_mount(flag: MountFlag, workdir: str = "/") -> SandboxMount:
    """The sandbox mount for one parsed ``RUN --mount`` flag (a bind mount's ``root`` and an
    ssh mount's ``socket`` are left for the caller to resolve).

    As BuildKit: a relative target of a bind, cache or tmpfs mount is in the step's
    ``workdir`` (that of a secret or ssh mount is in ``/``), so is a missing one (the
    WORKDIR itself), and one that comes to ``/`` is refused (InvalidMount); a cache's id
    defaults to its target as written, cleaned (``target=.cache`` under any WORKDIR is
    the cache ``.cache``)."""
    target = _clean("/" + flag.target) if flag.target else ""
    if flag.type in (MountType.BIND, MountType.CACHE, MountType.TMPFS):
        target = _clean(posixpath.join(workdir, flag.target))
        if target == "/":
            raise InvalidMount(f"type={flag.type},target={flag.target}", (
                'invalid mount target "/": the mount would hide the whole image; give a '
                "target below / (a relative or missing one is in the WORKDIR)"))
    if flag.type is MountType.BIND:
        return BindMount(target=target, source=posixpath.normpath("/" + flag.source.lstrip("/")),
                         from_ref=flag.from_ or None, rw=not flag.readonly)
    if flag.type is MountType.CACHE:
        relative = not flag.target.startswith("/")
        mount = CacheMount(target=target, sharing=Sharing(flag.sharing or "shared"),
                           id=flag.id or (_clean(flag.target) if relative else ""),
                           readonly=flag.readonly, uid=flag.uid or 0, gid=flag.gid or 0,
                           mode=0o755 if flag.mode is None else flag.mode)
        if flag.from_:  # the caller fills in base and seed from the stage's content
            return replace(mount, from_ref=flag.from_,
                           source=posixpath.normpath("/" + flag.source.lstrip("/")))
        if (flag.uid, flag.gid, flag.mode) != (None, None, None):
            return replace(mount, base=f"uid={mount.uid},gid={mount.gid},mode={mount.mode:04o}")
        return mount
    if flag.type is MountType.TMPFS:
        return TmpfsMount(target=target, size=flag.size)
    if flag.type is MountType.SECRET:
        return SecretMount(id=flag.id or posixpath.basename(target), target=target or None,
                           env=flag.env, required=flag.required,
                           mode=0o400 if flag.mode is None else flag.mode, uid=flag.uid or 0,
                           gid=flag.gid or 0)
    if flag.type is MountType.SSH:
        return SshMount(id=flag.id or "default", target=target, required=flag.required,
                        mode=0o600 if flag.mode is None else flag.mode, uid=flag.uid or 0,
                        gid=flag.gid or 0)
    raise InvalidMount(f"type={flag.type}", "this sandbox does not run this type of mount")


@dataclass(frozen=True)
class RunSpec:
    """One ``RUN`` step, ready to execute.

    - ``argv``: the command, already shell-wrapped by the caller (``/bin/sh -c ...``).
    - ``env``: ``NAME=value`` strings; the process gets exactly these, nothing else.
    - ``user``: ``name``, ``uid``, ``uid:gid``, ``name:group`` ...; empty means root.
    - ``workdir``: absolute; created (0755, owned by the step's user and group) if
      missing, and that stays in the step's changes, as BuildKit's executor does.
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
    mounts: tuple[SandboxMount, ...] = ()
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

