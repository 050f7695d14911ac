"""The process that sets up one step's sandbox, then becomes the sandbox.

Run as a script (stdlib only; of pybuild only ``builder/layers/rootwalk.py``, the in-root
path walk, and ``confine.py``, loaded by their paths) by ``runner.py``, already
inside a private mount namespace made by ``unshare(1)`` -- and, for the chroot executor,
inside fresh PID/IPC/UTS (and network) namespaces too, as their PID 1. Every mount made
here lives in that namespace and disappears with it: nothing needs unmounting afterwards,
even after a crash or a SIGKILL.

Usage: ``python3 -I _stage.py PLAN_FD REPORT_FD`` -- the plan is one JSON document read
from PLAN_FD (secrets travel in it, never through a file). On REPORT_FD this writes JSON
lines: for the chroot executor first ``{"ns-init": N}`` (its own pid as the host sees it:
the init of the step's PID namespace, which the runner kills to interrupt the step), then
``{"stubs": [...], "touched": {...}}`` (mount points it had to create, relative to the
root, and the times of the directories it created them in), then
either ``{"child-pid": N}`` when the command starts (bwrap writes that one itself through
``--json-status-fd``: the host pid of the namespace's init, the command itself with
``--as-pid-1``) or ``{"error": ..., "kind": ...}`` when set-up fails (exit 125).

The command starts as runc starts a container's process: the Python interpreter ignores
SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across ``exec`` -- a
``yes | head`` pipeline would then never end -- so every disposition goes back to its
default, the signal mask is emptied, every descriptor but 0-2 is closed (bwrap's status
descriptor excepted, which bwrap does not pass on) and the umask is 022; /proc's
read-only and masked paths are covered and the seccomp filter applies, as runc's
(``confine.py``).
"""

from __future__ import annotations

import base64
import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys
from typing import Any

# The JSON plan runner.py writes (see the module docstring).
Plan = dict[str, Any]

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_RELATIME = 1 << 21
# statvfs flags -> the mount flags a read-only remount must keep (see remount_readonly)
_KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
               (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
               (os.ST_RELATIME, MS_RELATIME))

# Docker's default capability set (moby oci/caps/defaults.go), which BuildKit's RUN gets.
DEFAULT_CAPS = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}
PR_CAPBSET_DROP = 24
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    def __init__(self, message: str, kind: str = "setup", err: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.errno = err


def mount(source: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    res = _libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None,
        ctypes.c_ulong(flags), data.encode() if data else None,
    )
    if res != 0:
        err = ctypes.get_errno()
        raise SetupError(f"mount {fstype or 'bind'} {source} on {target}: {os.strerror(err)}",
                         err=err)


def remount_readonly(target: str, flags: int = 0) -> None:
    """Make the bind mount at ``target`` read-only, keeping the flags it has: in a user
    namespace the kernel refuses a remount that would clear a flag locked on a mount
    from outside it (nosuid, nodev, noexec, the atime flags)."""
    have = os.statvfs(target).f_flag
    for st_flag, ms_flag in _KEPT_FLAGS:
        if have & st_flag:
            flags |= ms_flag
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


# Directories that got a mount point created in them -> their (atime, mtime) before, so
# the parent can put the times back once the mount point is gone.
touched: dict[str, list[int]] = {}


def _load(package: str, name: str) -> Any:
    """A stdlib-only module of pybuild (``builder.layers.rootwalk``, the one in-root path
    walk; ``builder.sandbox.confine``): imported as a module when this file is, loaded
    from its path when this runs as a script."""
    import importlib
    try:
        return importlib.import_module(f"..{package}.{name}", __package__ or "")
    except (ImportError, TypeError):  # a script under -I: nothing of pybuild is importable
        import importlib.util

        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir,
                            package, f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"_pybuild_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


_rootwalk = _load("layers", "rootwalk")
_confine = _load("sandbox", "confine")


def resolve(root: str, path: str, create: str | None, created: list[str]) -> str:
    """``path`` inside ``root``, symlinks followed without ever leaving ``root``.

    Missing components are made (directories; the last one a file if ``create`` is
    ``"file"``) and recorded in ``created``, relative to root, parents first.
    """

    def lstat(components: list[str]) -> os.stat_result | None:
        try:
            return os.lstat(os.path.join(root, *components))
        except FileNotFoundError:
            return None

    def make(components: list[str], last: bool) -> None:
        if create is None:
            raise SetupError(f"{path} does not exist in the image")
        parent = "/".join(components[:-1])
        if parent not in touched:
            pst = os.lstat(os.path.join(root, *components[:-1]))
            touched[parent] = [pst.st_atime_ns, pst.st_mtime_ns]
        full = os.path.join(root, *components)
        try:
            if last and create == "file":
                os.close(os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            else:
                os.mkdir(full, 0o755)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            raise SetupError(f"cannot make the mount point {path}: it would be inside a "
                             "read-only mount; choose a target that exists there, or "
                             "mount the outer one rw") from None
        created.append("/".join(components))

    try:
        resolved = _rootwalk.walk_in_root(
            path.split("/"), lstat=lstat, missing=make, follow_final=True,
            readlink=lambda c: os.readlink(os.path.join(root, *c)))
    except _rootwalk.SymlinkLoop:
        raise SetupError(f"{path}: too many levels of symbolic links") from None
    return os.path.join(root, *resolved)


def setup_mounts(plan: Plan, root: str, stubs: list[str]) -> None:
    secrets_dir = plan["secrets_dir"]
    secrets_ready = False
    for i, m in enumerate(plan["mounts"]):
        kind = m["type"]
        as_file = kind == "secret" or m.get("file")
        dst = resolve(root, m["target"], "file" if as_file else "dir", stubs)
        if os.path.isdir(dst) != (not as_file):
            what = "a file" if as_file else "a directory"
            there = "directory" if os.path.isdir(dst) else "file"
            raise SetupError(f"cannot mount {what} at {m['target']}: the image has a "
                             f"{there} there; choose another target")
        if kind == "bind":
            mount(m["source"], dst, None, MS_BIND | MS_REC)
            if m["readonly"]:
                remount_readonly(dst)
        elif kind == "overlay":
            mount("overlay", dst, "overlay", 0, m["data"])
        elif kind == "tmpfs":
            size = f"size={m['size']}" if m.get("size") else ""
            mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, size)
        elif kind == "secret":
            if not secrets_ready:
                # The secret's bytes only ever touch memory.
                os.makedirs(secrets_dir, mode=0o700, exist_ok=True)
                mount("tmpfs", secrets_dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=700")
                secrets_ready = True
            path = os.path.join(secrets_dir, str(i))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, base64.b64decode(m["data"]))
            os.close(fd)
            os.chown(path, m["uid"], m["gid"])
            os.chmod(path, m["mode"])
            mount(path, dst, None, MS_BIND)
            remount_readonly(dst, MS_NOSUID | MS_NODEV)
        else:
            raise SetupError(f"unknown mount type {kind!r}")
    files = (("/etc/hosts", plan.get("hosts")), ("/etc/resolv.conf", plan.get("resolv")))
    for name, source in files:
        if source:
            dst = resolve(root, name, "file", stubs)
            mount(source, dst, None, MS_BIND)
            remount_readonly(dst)


def setup_dev(plan: Plan, root: str, stubs: list[str]) -> None:
    dev = resolve(root, "/dev", "dir", stubs)
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        node = os.path.join(dev, name)
        os.close(os.open(node, os.O_WRONLY | os.O_CREAT, 0o666))
        mount(f"/dev/{name}", node, None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                         ("ptmx", "pts/ptmx")):
        os.symlink(target, os.path.join(dev, name))
    os.mkdir(os.path.join(dev, "shm"))
    mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV,
          f"mode=1777,size={plan['shm_size']}")
    for name, fstype, flags, data in (
            ("pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620"),
            ("mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, "")):
        os.mkdir(os.path.join(dev, name))
        try:
            mount(fstype, os.path.join(dev, name), fstype, flags, data)
        except SetupError:
            pass  # no pseudo-terminals or message queues: builds rarely need them


def setup_pipes(plan: Plan, root: str) -> None:
    """Read-only files at /dev/pipes/<name> (the chroot executor; bwrap binds them)."""
    if not plan["pipes"]:
        return
    pipes = os.path.join(root, "dev", "pipes")
    os.mkdir(pipes, 0o755)
    for p in plan["pipes"]:
        dst = os.path.join(pipes, p["name"])
        os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755))
        mount(p["source"], dst, None, MS_BIND)
        remount_readonly(dst)


def set_rlimits(plan: Plan) -> None:
    """``--ulimit``: the command's resource limits (set while still privileged, so a hard
    limit may also be raised; the command and its children inherit them)."""
    for name, soft, hard in plan.get("rlimits") or ():
        which = getattr(resource, f"RLIMIT_{name.upper()}")
        infinite = resource.RLIM_INFINITY
        try:
            resource.setrlimit(which, (infinite if soft < 0 else soft,
                                       infinite if hard < 0 else hard))
        except (ValueError, OSError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SetupError(f"--ulimit {name}={soft}:{hard} cannot be set: {why}") from exc


def loopback_up() -> None:
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def drop_capabilities() -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    keep = set(DEFAULT_CAPS.values())
    for cap in range(last + 1):
        if cap not in keep and _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise SetupError(f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}")


def setup_sys(plan: Plan, root: str, stubs: list[str]) -> None:
    # A fresh sysfs shows this namespace's network devices (only lo for network=none).
    sys_dir = resolve(root, "/sys", "dir", stubs)
    try:
        mount("sysfs", sys_dir, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SetupError as exc:
        # A user namespace may mount sysfs only in a network namespace of its own; with
        # the host's network the host's /sys is bound read-only instead (as rootless
        # runc does).
        if exc.errno != errno.EPERM:
            raise
        mount("/sys", sys_dir, None, MS_BIND | MS_REC)
        remount_readonly(sys_dir, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    protect_paths(plan, root, "/sys")
    if plan["network_none"]:
        loopback_up()


def protect_paths(plan: Plan, root: str, prefix: str) -> None:
    """Cover runc's read-only and masked paths under ``prefix`` (``confine.py``), which
    is mounted at ``root + prefix`` already."""
    for path, how in [] if plan["insecure"] else _confine.protected(root, prefix):
        target = root + path
        if how == "ro":
            mount(target, target, None, MS_BIND | MS_REC)
            remount_readonly(target)
        elif how == "dir":
            mount("tmpfs", target, "tmpfs", MS_RDONLY)
        else:
            mount("/dev/null", target, None, MS_BIND)


def restrict_syscalls(plan: Plan) -> None:
    """The step's seccomp filter (``confine.py``; none when insecure, as BuildKit's)."""
    if not plan["insecure"]:
        try:
            _confine.install_filter(_confine.keyring_filter())
        except OSError as exc:
            raise SetupError(str(exc.strerror)) from None


def own_workdir(plan: Plan, root: str, created: list[str]) -> None:
    """The directories made for a missing workdir belong to the step's user and group,
    as BuildKit's executor makes them (``MkdirAllAndChown`` with the process's ids)."""
    for rel in created:
        os.lchown(os.path.join(root, rel), plan["uid"], plan["gid"])


def run_chroot(plan: Plan, root: str, stubs: list[str], report: int) -> None:
    proc = resolve(root, "/proc", "dir", stubs)
    try:
        mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except SetupError as exc:
        if exc.errno != errno.EPERM:
            raise
        raise SetupError(f"{exc}: a user namespace cannot mount a fresh /proc where this "
                         "one has masked paths (inside a container): run the container "
                         "with an unmasked /proc (docker run --security-opt "
                         "systempaths=unconfined; Kubernetes: securityContext.procMount: "
                         "Unmasked), see docs/rootless.md") from None
    protect_paths(plan, root, "/proc")
    setup_dev(plan, root, stubs)
    setup_pipes(plan, root)
    socket.sethostname(plan["hostname"])
    created: list[str] = []  # the workdir is real content: it stays in the layer
    resolve(root, plan["workdir"], "dir", created)
    own_workdir(plan, root, created)
    write(report, {"stubs": stubs, "touched": touched})
    os.chroot(root)
    os.chdir(plan["workdir"])
    if not plan["insecure"]:
        drop_capabilities()
    set_rlimits(plan)
    restrict_syscalls(plan)
    os.setgroups(plan["groups"])
    os.setgid(plan["gid"])
    os.setuid(plan["uid"])
    # A change of uid or gid clears the parent-death signal ``unshare --kill-child`` set:
    # set it again. (If the runner is gone already, the report below fails: EPIPE.)
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise SetupError(f"cannot set the parent-death signal: {os.strerror(ctypes.get_errno())}")
    env = dict(e.split("=", 1) for e in plan["env"])
    write(report, {"child-pid": os.getpid()})
    os.close(report)
    argv = plan["argv"]
    reset_process_state()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        sys.stderr.write(f"exec {argv[0]!r} failed: {exc.strerror}\n")
        os._exit(127 if exc.errno == errno.ENOENT else 126)


def run_bwrap(plan: Plan, root: str, stubs: list[str], report: int) -> None:
    for name in ("/proc", "/dev"):
        resolve(root, name, "dir", stubs)
    created: list[str] = []
    # bwrap sets PWD to its --chdir: the directory as getcwd() names it (links resolved),
    # which is what a shell's pwd says under BuildKit (runc sets no PWD)
    cwd = "/" + os.path.relpath(resolve(root, plan["workdir"], "dir", created), root)
    own_workdir(plan, root, created)
    write(report, {"stubs": stubs, "touched": touched})
    # The network namespace (network=none) and /sys come from the stage: bwrap shares the
    # former and carries the latter over with its recursive bind of the root.
    args = [plan["bwrap"], "--bind", root, "/", "--proc", "/proc",
            *([] if plan["insecure"] else _confine.bwrap_protect_args()),
            "--dev", "/dev",
            "--unshare-pid", "--as-pid-1", "--unshare-ipc", "--unshare-uts",
            "--hostname", plan["hostname"], "--chdir", "/" if cwd == "/." else cwd, "--die-with-parent",
            "--json-status-fd", str(report),
            "--cap-drop", "ALL"]
    for cap in ["ALL"] if plan["insecure"] else DEFAULT_CAPS:
        args += ["--cap-add", cap]
    args += ["--perms", "1777", "--size", str(plan["shm_size"]), "--tmpfs", "/dev/shm",
             "--mqueue", "/dev/mqueue"]
    for p in plan["pipes"]:
        args += ["--ro-bind", p["source"], f"/dev/pipes/{p['name']}"]
    args += ["--", *plan["argv"]]
    set_rlimits(plan)
    restrict_syscalls(plan)  # bwrap itself makes none of the refused calls
    # bwrap keeps real root's uid (no user namespace, so files keep their real owners);
    # the group and supplementary groups are set here and bwrap inherits them.
    os.setgroups(plan["groups"])
    os.setgid(plan["gid"])
    env = dict(e.split("=", 1) for e in plan["env"])
    reset_process_state(keep=(report,))
    os.execve(plan["bwrap"], args, env)


def reset_process_state(keep: tuple[int, ...] = ()) -> None:
    """Default dispositions for every signal, an empty mask, no descriptor but 0-2 and
    ``keep``: what the command gets from runc (see the module docstring)."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # the C library's own real-time signals
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def write(fd: int, obj: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(obj) + "\n").encode())


def main() -> None:
    plan_fd, report = int(sys.argv[1]), int(sys.argv[2])
    os.umask(0o022)  # mount points, the workdir and the command: as under runc
    with os.fdopen(plan_fd, "rb") as f:
        plan = json.load(f)
    if plan["executor"] == "chroot":
        # /proc is still the host's here: "self" names this process's host pid.
        write(report, {"ns-init": int(os.readlink("/proc/self"))})
    stubs: list[str] = []
    try:
        rootfs = plan["rootfs"]
        root = rootfs["merged"]
        if rootfs["mode"] == "overlay":
            here = os.getcwd()
            if rootfs["cwd"]:
                os.chdir(rootfs["cwd"])
            try:
                mount("overlay", root, "overlay", 0, rootfs["data"])
            except SetupError:
                # index=on refuses a lower dir still in use as another overlay's upper
                # dir (EBUSY) where index=off only warns: fall back rather than fail;
                # only hard links broken by copy-up are then not repaired.
                if ",index=on" not in rootfs["data"]:
                    raise
                mount("overlay", root, "overlay", 0,
                      rootfs["data"].replace(",index=on", ",index=off"))
            os.chdir(here)
        setup_mounts(plan, root, stubs)
        setup_sys(plan, root, stubs)
        if plan["executor"] == "chroot":
            run_chroot(plan, root, stubs, report)
        else:
            run_bwrap(plan, root, stubs, report)
    except SetupError as exc:
        write(report, {"error": str(exc), "kind": exc.kind, "stubs": stubs, "touched": touched})
    except OSError as exc:
        kind = "enospc" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "setup"
        write(report, {"error": str(exc), "kind": kind, "stubs": stubs, "touched": touched})
    sys.exit(125)


if __name__ == "__main__":
    main()
