"""Run one ``RUN`` step in a sandbox: :func:`run_step`.

How a step runs (as root: real root, or root of the user namespace a non-root build
runs in, ``userns.py``):

1. ``state_dir`` gets the layout drawn in ``rootfs.py``; cache mounts are leased
   (``caches.py``); secrets are read into memory.
2. ``setpriv --pdeathsig KILL unshare --mount --propagation private --fork --kill-child``
   (plus ``--pid --ipc --uts [--net]`` for the chroot executor) starts ``_stage.py``
   (``process.py`` says how the step's processes end, whatever happens), which mounts
   the overlay (or uses the flattened copy), the step's mounts, /etc/hosts and
   /etc/resolv.conf read-only, then becomes the sandbox:

   - ``Executor.BWRAP``: bubblewrap with the composed root as /, fresh /proc and a minimal
     /dev, PID/IPC/UTS namespaces (the command is PID 1, as under runc; a network
     namespace too for ``network=none``), Docker's default capabilities. /tmp is part of the
     root, so /tmp writes stay in the
     layer, as with Docker. bwrap keeps real root's uid: without a user namespace files
     keep their real owners, and bwrap cannot switch to another uid without one (which
     would remap every owner), so a non-root ``USER`` runs under the chroot executor.
   - ``Executor.CHROOT``: the same namespaces from ``unshare(1)``; the stage mounts /proc,
     /sys, a minimal /dev, chroots, drops to Docker's capabilities, sets groups, gid and
     uid, and execs the command.

3. Every mount lives only in that namespace and goes away with it. Mount points the
   sandbox had to create are removed from the step's changes afterwards (BuildKit does
   the same), so mounts leave nothing in the layer; ``state_dir``'s scratch parts are
   removed; the changes (upper dir or flattened copy) stay for the caller.

Nothing is written outside ``state_dir`` and ``cache_dir``. The call blocks; from asyncio
run it in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import base64
import contextlib
import enum
import errno
import os
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..layers.errors import LayerError
from ..layers.pathres import resolve_under
from .caches import lease_caches
from .cleanup import cleanup
from .differ import forgive_touched, hold_directories, take_snapshot, upper_from_copy
from .errors import (
    OutOfDiskSpace,
    RunFailed,
    SandboxSetupError,
    SandboxUnavailable,
    SecretNotFound,
    StepInterrupted,
)
from .flatten import flatten_lowers
from .linkgroups import has_link_groups, relink_copied_up
from .netfiles import hosts_file, resolv_conf
from .process import TAIL_LINES, OutputCallback, StepInterrupt, spawn
from .rootfs import (
    MAX_LOWERS,
    RootfsLayout,
    RootfsMode,
    overlay_index_supported,
    overlay_mount_data,
    overlay_supported,
    read_from_lowers,
)
from .spec import (
    BindMount,
    CacheMount,
    Network,
    RunSpec,
    SecretMount,
    SshMount,
    TmpfsMount,
)
from .ssh import AgentRelay
from .users import ExecUser, resolve_user

__all__ = ["DEFAULT_SHM_SIZE", "TAIL_LINES", "Executor", "OutputCallback", "StepResult",
           "run_step"]

# /dev/shm of a RUN step without --shm-size: BuildKit's (runc spec) 64 MiB tmpfs
DEFAULT_SHM_SIZE = 64 << 20



# Why a user namespace cannot mount /proc inside most containers, and the fix.
MASKED_PROC = ("a user namespace cannot mount a fresh /proc where this one has masked paths "
               "(inside a container): run the container with an unmasked /proc (docker run "
               "--security-opt systempaths=unconfined; Kubernetes: securityContext.procMount: "
               "Unmasked), see docs/rootless.md")


class Executor(enum.Enum):
    AUTO = "auto"
    BWRAP = "bwrap"
    CHROOT = "chroot"


@dataclass(frozen=True)
class StepResult:
    """How a step ran. ``changes``: the overlay upper dir (OVERLAY), the whole resulting
    root (COPY), or with ``as_upper`` in both modes an upper dir -- left in ``state_dir``
    for the caller to turn into a layer."""

    exit_code: int
    rootfs_mode: RootfsMode
    executor: Executor
    changes: Path
    user: ExecUser
    output_tail: tuple[str, ...]


def _choose_executor(wanted: Executor, user: ExecUser) -> tuple[Executor, str | None]:
    bwrap = shutil.which("bwrap")
    if wanted is Executor.CHROOT:
        return wanted, None
    if wanted is Executor.BWRAP:
        if bwrap is None:
            raise SandboxUnavailable(
                "executor=bwrap but bwrap is not installed: apt-get install bubblewrap"
            )
        if user.uid != 0:
            raise SandboxUnavailable(
                f"executor=bwrap cannot run as uid {user.uid}: bwrap switches uid only "
                "inside a user namespace, which would change every file's owner; "
                "use executor=auto or executor=chroot"
            )
        return wanted, bwrap
    if bwrap is not None and user.uid == 0:
        return Executor.BWRAP, bwrap
    return Executor.CHROOT, None


def _choose_rootfs(wanted: RootfsMode, state_dir: Path, lowers: Sequence[Path]) -> RootfsMode:
    if wanted is RootfsMode.AUTO:
        if len(set(lowers)) > MAX_LOWERS or not overlay_supported(state_dir):
            return RootfsMode.COPY
        # Without index=on (always so inside a user namespace) a copy-up breaks a hard
        # link: where the lowers have link groups, the copy keeps them, as a root build
        # with index=on does -- the same layers on every machine.
        if not overlay_index_supported(state_dir) and any(map(has_link_groups, lowers)):
            return RootfsMode.COPY
        return RootfsMode.OVERLAY
    if wanted is RootfsMode.OVERLAY and not overlay_supported(state_dir):
        raise SandboxUnavailable(
            f"rootfs=overlay but overlayfs cannot be mounted with its upper dir in "
            f"{state_dir} (no overlay support in this kernel, or that filesystem cannot "
            "hold an upper dir): use rootfs=auto or rootfs=copy"
        )
    return wanted


def _indexed_copy_ups(layout: RootfsLayout) -> bool:
    """Did the step copy up a file with several names? With ``index=on`` overlayfs puts
    an entry in ``<workdir>/index`` for each copy-up of a lower file with more than one
    link, and for no other (every copy-up only with ``nfs_export=on``, which this mount
    leaves off: Documentation/filesystems/overlayfs.rst, "Inode index"). An empty index
    spares :func:`relink_copied_up` its walk of the upper dir, which is as long as the
    step's output (an ``npm install``: tens of thousands of files)."""
    try:
        with os.scandir(layout.work / "index") as entries:
            return any(True for _ in entries)
    except FileNotFoundError:
        return True  # no index where one was expected: look, as before


def ssh_target(spec: RunSpec, mount: SshMount) -> str:
    """Where an ssh mount's socket appears: its target, else BuildKit's default
    ``/run/buildkit/ssh_agent.<N>`` (N counts the step's ssh mounts from 0)."""
    if mount.target:
        return mount.target
    n = [m for m in spec.mounts if isinstance(m, SshMount)].index(mount)
    return f"/run/buildkit/ssh_agent.{n}"


def _mount_plans(
    spec: RunSpec, layout: RootfsLayout, cache_paths: Sequence[Path],
    relays: contextlib.ExitStack,
) -> tuple[list[dict[str, object]], dict[str, str]]:
    """The stage's mount list (parents before children) and the env the mounts add
    (secrets as variables; ``SSH_AUTH_SOCK`` for the first ssh mount, as BuildKit)."""
    plans: list[tuple[str, dict[str, object]]] = []
    secret_env: dict[str, str] = {}
    caches = iter(cache_paths)
    ssh = [m for m in spec.mounts if isinstance(m, SshMount)]
    if ssh and not any(e.startswith("SSH_AUTH_SOCK=") for e in spec.env):
        secret_env["SSH_AUTH_SOCK"] = ssh_target(spec, ssh[0])
    for index, m in enumerate(spec.mounts):
        if isinstance(m, CacheMount):
            plans.append((m.target, {"type": "bind", "source": str(next(caches)),
                                     "readonly": m.readonly}))
        elif isinstance(m, TmpfsMount):
            plans.append((m.target, {"type": "tmpfs", "size": m.size}))
        elif isinstance(m, BindMount):
            plans.append((m.target, _bind_plan(m, layout, index)))
        elif isinstance(m, SecretMount):
            source = spec.secrets.get(m.id)
            if source is None:
                if m.required:
                    raise SecretNotFound(m.id)
                continue  # BuildKit skips an optional secret nobody provided
            data = source if isinstance(source, bytes) else source.read_bytes()
            if m.env:
                secret_env[m.env] = data.decode("utf-8", "replace")
            if m.file_target:
                plans.append((m.file_target, {
                    "type": "secret", "data": base64.b64encode(data).decode(),
                    "mode": m.mode, "uid": m.uid, "gid": m.gid}))
        elif isinstance(m, SshMount):
            if m.socket is None:
                if m.required:
                    raise SandboxSetupError(
                        f"ssh mount {m.id!r} is required but no agent socket was given for it")
                continue  # BuildKit skips an optional agent nobody forwarded
            relay = relays.enter_context(
                AgentRelay(m.socket, mode=m.mode, uid=m.uid, gid=m.gid))
            plans.append((ssh_target(spec, m), {"type": "bind", "source": str(relay.path),
                                                "readonly": False, "file": True}))
    plans.sort(key=lambda p: p[0].rstrip("/").count("/"))
    return [{"target": target, **plan} for target, plan in plans], secret_env


def _bind_plan(m: BindMount, layout: RootfsLayout, index: int) -> dict[str, object]:
    if m.root is None:
        raise SandboxSetupError(
            f"bind mount at {m.target}: from={m.from_ref or 'context'} was not resolved "
            "to a directory (BindMount.resolved)"
        )
    root = m.root.resolve()
    # Links on the way resolve inside the root, as BuildKit's: a stage's /a -> /b is its
    # own /b, a context link's absolute target starts at the context.
    try:
        source = resolve_under(root, m.source)
    except LayerError as exc:
        raise SandboxSetupError(f"bind mount at {m.target}: {exc}") from None
    if source != root and root not in source.parents:
        raise SandboxSetupError(
            f"bind mount at {m.target}: source {m.source!r} leaves its root {m.root}"
        )
    if not source.exists():
        raise SandboxSetupError(f"bind mount at {m.target}: source {m.source!r} not found")
    # A file is mounted on a file: the stage makes the mount point as a file (and any
    # missing parents as directories), all removed from the changes afterwards.
    is_file = not source.is_dir()
    if not m.rw:
        return {"type": "bind", "source": str(source), "readonly": True, "file": is_file}
    # rw: writes go to a throw-away copy, never back to the source (BuildKit semantics).
    scratch = layout.run / f"bind{index}"
    if layout.mode is RootfsMode.OVERLAY and source.is_dir():
        (scratch / "upper").mkdir(parents=True)
        (scratch / "work").mkdir()
        data, _ = overlay_mount_data([source], scratch / "upper", scratch / "work")
        return {"type": "overlay", "data": data}
    scratch.mkdir(parents=True)
    copy = scratch / "copy"
    if source.is_dir():
        flatten_lowers([source], copy)
    else:
        shutil.copy2(source, copy)
    return {"type": "bind", "source": str(copy), "readonly": False, "file": is_file}


def run_step(
    spec: RunSpec,
    *,
    lowers: Sequence[Path],
    state_dir: Path,
    cache_dir: Path | None = None,
    rootfs: RootfsMode = RootfsMode.AUTO,
    executor: Executor = Executor.AUTO,
    on_output: OutputCallback | None = None,
    check: bool = True,
    set_home: bool = False,
    as_upper: bool = False,
    interrupt: StepInterrupt | None = None,
    shm_size: int | None = None,
    rlimits: Sequence[tuple[str, int, int]] = (),
) -> StepResult:
    """Run ``spec`` on the root made of ``lowers`` (top first); return how it went.

    ``state_dir`` must be empty or absent; afterwards it holds only the changes
    (``StepResult.changes``). ``cache_dir`` holds cache mounts (required if the spec has
    any). Raises :class:`RunFailed` (:class:`OutOfDiskSpace` when the disk filled up) if
    the command exits non-zero and ``check`` is true; :class:`SandboxSetupError` /
    :class:`SandboxUnavailable` when the sandbox cannot be made. Scratch directories are
    removed and every process is gone when this returns or raises, KeyboardInterrupt
    included.

    The command's environment is exactly ``spec.env``; with ``set_home`` a missing
    ``HOME`` is set to the user's home from the image's /etc/passwd, as Docker does.

    ``as_upper``: in COPY mode, snapshot the flattened root before the command and return
    the changes as an overlayfs upper dir (``builder.sandbox.differ``), so that callers
    get the same thing whichever mode ran.

    ``interrupt``: another thread may call its ``interrupt()`` to stop the step; every
    process of the step is killed, the same cleanup runs, and :class:`StepInterrupted`
    is raised.

    The command starts as runc starts a container's process: every signal at its default
    disposition, none blocked, no file descriptors but 0-2, umask 022.

    ``shm_size`` (bytes) sizes the tmpfs at /dev/shm (default 64 MiB, BuildKit's); ``rlimits``
    are ``(name, soft, hard)`` resource limits for the command (``nofile``, ``nproc``...,
    -1 for unlimited), as ``docker build --shm-size`` / ``--ulimit`` give them.
    """
    if os.geteuid() != 0:
        raise SandboxUnavailable(
            "RUN steps need root (mounts and namespaces): run as root, or enter a user "
            "namespace first (builder.sandbox.userns.enter_user_namespace, as a non-root "
            "`pybuild build` does)")
    state_dir = Path(state_dir).absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    if any(state_dir.iterdir()):
        raise SandboxSetupError(f"state directory {state_dir} is not empty")
    lowers = tuple(Path(p).absolute() for p in lowers)
    if not lowers:  # FROM scratch: overlayfs still wants a lower directory
        (state_dir / "run" / "empty").mkdir(parents=True)
        lowers = (state_dir / "run" / "empty",)
    mode = _choose_rootfs(rootfs, state_dir, lowers)
    layout = RootfsLayout(mode, lowers, state_dir,
                          index=mode is RootfsMode.OVERLAY and overlay_index_supported(state_dir))
    reports: list[dict[str, object]] = []
    before: list[Any] = []  # the COPY-mode snapshot, when as_upper
    interrupt = interrupt or StepInterrupt()
    try:
        user, kind, code, tail = _prepare_and_spawn(
            spec, layout, cache_dir, executor, on_output, reports, set_home,
            before if as_upper else None, interrupt, shm_size, rlimits,
        )
        if layout.index and any("child-pid" in r for r in reports) and _indexed_copy_ups(layout):
            # Before cleanup: the copied-up files' origin xattrs are needed.
            try:
                relink_copied_up(layout.upper, layout.lowers)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise SandboxSetupError(
                    f"could not keep the step's hard-linked files linked: {exc}") from exc
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutOfDiskSpace(spec.argv, 125, [str(exc)], state_dir) from exc
        raise
    finally:
        cleanup(layout, reports, workdir=spec.workdir)

    if interrupt.interrupted:
        raise StepInterrupted(spec.argv)
    errors = [r for r in reports if "error" in r]
    started = any("child-pid" in r for r in reports)
    if errors:
        if errors[0].get("kind") == "enospc":
            raise OutOfDiskSpace(spec.argv, code, [str(errors[0]["error"])], state_dir)
        raise SandboxSetupError(str(errors[0]["error"]), tail)
    if not started:
        raise SandboxSetupError(f"the sandbox exited with code {code} before the command ran", tail)
    if kind is Executor.BWRAP and code == 1 and tail and tail[-1].startswith("bwrap: Can't mount proc"):
        raise SandboxSetupError(f"{tail[-1]}: {MASKED_PROC}")
    if code != 0 and check:
        if _disk_full(state_dir, tail):
            raise OutOfDiskSpace(spec.argv, code, tail, state_dir)
        raise RunFailed(spec.argv, code, tail)
    changes = layout.changes
    if before and layout.mode is RootfsMode.COPY:
        touched: dict[str, object] = {}
        for report in reports:
            if isinstance(report.get("touched"), dict):
                touched = report["touched"]  # type: ignore[assignment]
        snapshot = forgive_touched(before[0], layout.merged, touched)
        upper_from_copy(snapshot, layout.merged, layout.upper)
        changes = layout.upper
    return StepResult(code, layout.mode, kind, changes, user, tuple(tail))


def _prepare_and_spawn(
    spec: RunSpec,
    layout: RootfsLayout,
    cache_dir: Path | None,
    executor: Executor,
    on_output: OutputCallback | None,
    reports: list[dict[str, object]],
    set_home: bool,
    before: list[Any] | None,
    interrupt: StepInterrupt,
    shm_size: int | None = None,
    rlimits: Sequence[tuple[str, int, int]] = (),
) -> tuple[ExecUser, Executor, int, list[str]]:
    if layout.mode is RootfsMode.OVERLAY:
        passwd = read_from_lowers(layout.lowers, "etc/passwd")
        group = read_from_lowers(layout.lowers, "etc/group")
    else:
        flatten_lowers(layout.lowers, layout.merged)
        if before is not None:
            before.append(take_snapshot(layout.merged))
        passwd = _read(layout.merged, "etc/passwd")
        group = _read(layout.merged, "etc/group")
    user = resolve_user(spec.user, _text(passwd), _text(group))
    kind, bwrap = _choose_executor(executor, user)

    cache_mounts = [m for m in spec.mounts if isinstance(m, CacheMount)]
    if cache_mounts and cache_dir is None:
        raise SandboxSetupError("the step has cache mounts but no cache_dir was given")
    with lease_caches(Path(cache_dir or layout.state_dir), cache_mounts) as cache_paths, \
            contextlib.ExitStack() as relays:
        if before:
            relays.enter_context(hold_directories(before[0], layout.merged))
        layout.run.mkdir(exist_ok=True)
        mounts, secret_env = _mount_plans(spec, layout, cache_paths, relays)
        pipes = []
        if spec.pipes:
            (layout.run / "pipes").mkdir()
            for name, data in sorted(spec.pipes.items()):
                path = layout.run / "pipes" / name
                path.write_bytes(data)
                os.chmod(path, 0o755)
                pipes.append({"name": name, "source": str(path)})
        hosts = layout.run / "hosts"
        hosts.write_text(hosts_file(spec))
        env = [e for e in spec.env if e.split("=", 1)[0] not in secret_env]
        env += [f"{k}={v}" for k, v in secret_env.items()]
        if set_home and not any(e.startswith("HOME=") for e in env):
            env.append(f"HOME={user.home}")
        resolv = resolv_conf(layout.run / "resolv.conf")
        plan: dict[str, object] = {
            "executor": kind.value,
            "bwrap": bwrap,
            "rootfs": _rootfs_plan(layout),
            "mounts": mounts,
            "secrets_dir": str(layout.run / "secrets"),
            "hosts": str(hosts),
            "resolv": str(resolv) if resolv else None,
            "network_none": spec.network is Network.NONE,
            "hostname": spec.hostname,
            "argv": list(spec.argv),
            "env": env,
            "uid": user.uid,
            "gid": user.gid,
            "groups": list(user.groups),
            "workdir": spec.workdir,
            "pipes": pipes,
            "insecure": spec.insecure,
            "shm_size": shm_size or DEFAULT_SHM_SIZE,
            "rlimits": [list(r) for r in rlimits],
        }
        if interrupt.interrupted:
            return user, kind, -signal.SIGKILL, []
        code, tail = spawn(plan, kind is Executor.CHROOT, spec.network, on_output, reports,
                           interrupt)
    if kind is Executor.BWRAP and code == 1 and tail and tail[-1].startswith("bwrap: execvp"):
        # bwrap exits 1 when the command cannot be executed; report it as a shell would.
        code = 127 if tail[-1].endswith("No such file or directory") else 126
    return user, kind, code, tail


def _read(root: Path, rel: str) -> bytes | None:
    """The regular file at ``rel`` in the root ``root``, symlinks on the way followed
    inside it (as runc reads /etc/passwd), or None."""
    try:
        path = resolve_under(root, rel)
        return path.read_bytes() if path.is_file() and not path.is_symlink() else None
    except (OSError, LayerError):
        return None


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def _rootfs_plan(layout: RootfsLayout) -> dict[str, object]:
    if layout.mode is RootfsMode.COPY:
        return {"mode": "copy", "merged": str(layout.merged)}
    for d in (layout.upper, layout.work, layout.merged):
        d.mkdir()
    data, cwd = overlay_mount_data(layout.lowers, layout.upper, layout.work,
                                   index=layout.index, links=layout.links)
    return {"mode": "overlay", "merged": str(layout.merged), "data": data, "cwd": cwd}


def _disk_full(state_dir: Path, tail: Sequence[str]) -> bool:
    if any("No space left on device" in line for line in tail):
        return True
    st = os.statvfs(state_dir)
    return st.f_bavail * st.f_frsize < 1 << 20
