"""Unprivileged builds: the user namespace a non-root ``pybuild build`` runs in.

:func:`enter_user_namespace` moves the calling process into a new user namespace, as
rootless BuildKit (rootlesskit) and podman do: uid 0 inside is the calling user, uids
1..N are the user's subordinate ranges (``/etc/subuid``, ``/etc/subgid``), mapped by the
setuid helpers ``newuidmap`` / ``newgidmap`` (package ``uidmap``). Inside, the process is
root for everything the build does -- it mounts overlayfs (kernel >= 5.11, with
``userxattr``), chowns files to any mapped id, runs the sandbox -- so files keep the
owners the image gives them, and every layer records the same in-namespace owners a root
build records: the same inputs give the same layer and image digests.

The process gets a mount namespace of its own with it (``CLONE_NEWNS``): the build may
mount there (a lazy layer's FUSE file system, :mod:`builder.lazyfs`), seen only by it
and its steps. A root build gets one too (:func:`private_mounts`).

Outside the namespace, a file owned by in-namespace uid ``u > 0`` belongs to the
``u``-th subordinate id; files owned by uid 0 belong to the user.

Consequences inside the namespace (``in_user_namespace()``):

- overlayfs keeps its xattrs in ``user.overlay.*`` instead of ``trusted.overlay.*``
  (:func:`overlay_xattr`): lower dirs mark opaque directories that way, upper dirs come
  back marked that way;
- device nodes cannot be created (whiteouts -- 0/0 character devices -- can); a base
  layer's device nodes are skipped, as containerd does in a user namespace;
- an id outside the mapped ranges cannot be given to a file (``EINVAL``).

Every failure to get there names what is missing and the command that fixes it
(:class:`UserNamespaceUnavailable`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import pwd
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SandboxUnavailable

__all__ = [
    "IdRange",
    "UserNamespaceUnavailable",
    "become_root",
    "check_user_namespaces",
    "enter_user_namespace",
    "free_subordinate_range",
    "id_map",
    "in_user_namespace",
    "overlay_xattr",
    "private_mounts",
    "subordinate_ranges",
    "unmapped_owner",
]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_PRIVATE = 16384, 1 << 18
# The kernel takes at most 340 lines per map (and newuidmap as many); one is the user's.
_MAX_RANGES = 339
_PROC = Path("/proc")
_SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


class UserNamespaceUnavailable(SandboxUnavailable):
    """A non-root build cannot get its user namespace; the message says how to fix it."""


@dataclass(frozen=True)
class IdRange:
    """``count`` subordinate ids from ``start`` (one line of /etc/subuid or /etc/subgid)."""

    start: int
    count: int


@functools.cache
def in_user_namespace() -> bool:
    """Does this process run in a user namespace other than the initial one?"""
    try:
        lines = (_PROC / "self/uid_map").read_text().split("\n")
    except OSError:
        return False
    return [line.split() for line in lines if line.strip()] != [["0", "0", "4294967295"]]


def overlay_xattr(name: str) -> str:
    """The full name of overlayfs' xattr ``name`` (``opaque``, ``origin``...) as this
    process's overlay mounts use it: ``user.overlay.<name>`` inside a user namespace
    (mounted with ``userxattr``), else ``trusted.overlay.<name>``."""
    return f"{'user' if in_user_namespace() else 'trusted'}.overlay.{name}"


def _mapped_ranges(kind: str) -> list[tuple[int, int]]:
    try:
        text = (_PROC / f"self/{kind}_map").read_text()
    except OSError:
        return []
    return [(int(f[0]), int(f[2])) for f in (line.split() for line in text.splitlines())
            if len(f) == 3]


def unmapped_owner(uid: int, gid: int) -> str | None:
    """None if this process's user namespace maps ``uid`` and ``gid`` (always so outside
    one); else one line saying which is not mapped and how to fix that."""
    if not in_user_namespace():
        return None
    for kind, value in (("uid", uid), ("gid", gid)):
        ranges = _mapped_ranges(kind)
        if ranges and not any(start <= value < start + count for start, count in ranges):
            merged: list[list[int]] = []
            for start, count in sorted(ranges):
                if merged and merged[-1][1] + 1 == start:
                    merged[-1][1] = start + count - 1
                else:
                    merged.append([start, start + count - 1])
            have = ", ".join(f"{s}-{e}" for s, e in merged)
            return (f"{kind} {value} is not mapped in this non-root build's user namespace "
                    f"(it has {kind}s {have}); give the user a subordinate range that "
                    "covers it (usermod --add-subuids, --add-subgids) or build as root")
    return None


def subordinate_ranges(
    user: str, uid: int, path: Path, getsubids: str | None, groups: bool = False
) -> list[IdRange]:
    """The subordinate ranges of ``user`` (name or uid): from ``getsubids`` where
    installed (it also asks the NSS ``subid`` source), else from ``path``."""
    if getsubids is not None:
        out = subprocess.run([getsubids, *(["-g"] if groups else []), user],
                             capture_output=True, text=True, check=False)
        if out.returncode == 0:
            # "0: user 100000 65536" per range
            found = [IdRange(int(f[-2]), int(f[-1])) for f in
                     (line.split() for line in out.stdout.splitlines()) if len(f) >= 4
                     and f[-2].isdigit() and f[-1].isdigit()]
            if found:
                return found
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UserNamespaceUnavailable(f"cannot read {path}: {exc.strerror}") from exc
    found = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, str(uid)) \
                and fields[1].isdigit() and fields[2].isdigit() and int(fields[2]) > 0:
            found.append(IdRange(int(fields[1]), int(fields[2])))
    return found


def id_map(own: int, ranges: Sequence[IdRange]) -> list[int]:
    """``newuidmap``'s arguments after the pid: ``own`` as 0, the ranges from 1 on."""
    args = [0, own, 1]
    inside = 1
    for r in ranges[:_MAX_RANGES]:
        args += [inside, r.start, r.count]
        inside += r.count
    return args


def check_user_namespaces(proc: Path = _PROC) -> None:
    """Raise :class:`UserNamespaceUnavailable` if a sysctl forbids unprivileged users to
    create user namespaces (each names the setting and its fix)."""
    def read(name: str) -> str | None:
        try:
            return (proc / "sys" / name).read_text().strip()
        except OSError:
            return None

    fix = "as root: sysctl -w {0}={1} (and in /etc/sysctl.d/ to keep it)"
    if read("user/max_user_namespaces") == "0":
        raise UserNamespaceUnavailable(
            "user namespaces are disabled (user.max_user_namespaces = 0); enable them "
            + fix.format("user.max_user_namespaces", 28633))
    if read("kernel/unprivileged_userns_clone") == "0":
        raise UserNamespaceUnavailable(
            "unprivileged user namespaces are disabled "
            "(kernel.unprivileged_userns_clone = 0); enable them "
            + fix.format("kernel.unprivileged_userns_clone", 1))
    if read("kernel/apparmor_restrict_unprivileged_userns") == "1":
        raise UserNamespaceUnavailable(
            "AppArmor forbids unprivileged user namespaces "
            "(kernel.apparmor_restrict_unprivileged_userns = 1); allow them "
            + fix.format("kernel.apparmor_restrict_unprivileged_userns", 0)
            + ", or give pybuild's Python an AppArmor profile with `userns,`")


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def free_subordinate_range(files: Sequence[Path] = _SUBID_FILES, count: int = 65536) -> IdRange:
    """``count`` ids from 100000 on (useradd's ``SUB_UID_MIN``) that no line of ``files``
    gives anyone: the range to suggest. Two users sharing subordinate ids could reach
    each other's build files, so the fix must not hand out a range that is taken."""
    taken: list[tuple[int, int]] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.strip().split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                taken.append((int(fields[1]), int(fields[1]) + int(fields[2])))
    start = 100000
    while clashes := [end for first, end in taken if first < start + count and start < end]:
        start = max(clashes)
    return IdRange(start, count)


def _ranges_or_fail(name: str, uid: int, kind: str, getsubids: str | None) -> list[IdRange]:
    ranges = subordinate_ranges(name, uid, Path(f"/etc/sub{kind}"), getsubids,
                                groups=kind == "gid")
    if not ranges:
        free = free_subordinate_range()
        span = f"{free.start}-{free.start + free.count - 1}"
        raise UserNamespaceUnavailable(
            f"user {name} (uid {uid}) has no subordinate {kind} range in /etc/sub{kind}, "
            "which a non-root build needs to give image files their owners; add one as "
            f"root: usermod --add-subuids {span} --add-subgids {span} {name}")
    return ranges


def enter_user_namespace() -> None:
    """Move this process into a new user namespace in which it is root (see the module
    docstring). The process must be single-threaded (a kernel rule for ``unshare``):
    call this before any thread or event loop starts. Raises
    :class:`UserNamespaceUnavailable` naming what is missing and how to fix it."""
    uid, gid = os.getuid(), os.getgid()
    name = _user_name(uid)
    helpers = {tool: shutil.which(tool) for tool in ("newuidmap", "newgidmap")}
    for tool, path in helpers.items():
        if path is None:
            raise UserNamespaceUnavailable(
                f"{tool} not found: a non-root build maps the user's subordinate ids "
                "with it; install it as root (Debian/Ubuntu: apt-get install uidmap; "
                "Fedora/RHEL: dnf install shadow-utils)")
    getsubids = shutil.which("getsubids")
    uids = _ranges_or_fail(name, uid, "uid", getsubids)
    gids = _ranges_or_fail(name, uid, "gid", getsubids)
    check_user_namespaces()
    if threading.active_count() > 1:
        raise UserNamespaceUnavailable(
            "cannot enter a user namespace from a multi-threaded process: call "
            "enter_user_namespace() before any thread starts")
    pid = os.getpid()
    uid_args = " ".join(str(a) for a in id_map(uid, uids))
    gid_args = " ".join(str(a) for a in id_map(gid, gids))
    # The helpers must run outside the new namespace (their setuid bit means nothing
    # inside it): a child started now waits for the word, then maps this process.
    script = ('read go || exit 1; "$1" "$3" $4 || exit 1; exec "$2" "$3" $5')
    mapper = subprocess.Popen(
        ["/bin/sh", "-c", script, "sh", str(helpers["newuidmap"]),
         str(helpers["newgidmap"]), str(pid), uid_args, gid_args],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert mapper.stdin is not None and mapper.stderr is not None
    libc = ctypes.CDLL(None, use_errno=True)
    # A mount namespace of its own too: the build may mount (a lazy layer's FUSE file
    # system, builder.lazyfs) where only it and its steps see it.
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        mapper.kill()
        mapper.wait()
        raise UserNamespaceUnavailable(
            f"cannot create a user namespace: {os.strerror(err)}; "
            + ("the limit user.max_user_namespaces is reached" if err == 28 else
               "a seccomp or AppArmor profile may forbid it (in a container: see "
               "docs/rootless.md for the security options it needs)"))
    mapper.stdin.write(b"go\n")
    mapper.stdin.close()
    error = mapper.stderr.read().decode("utf-8", "replace").strip()
    if mapper.wait() != 0 or os.getuid() != 0:
        raise UserNamespaceUnavailable(
            f"could not map the subordinate ids of user {name} "
            f"(newuidmap {pid} {uid_args}; newgidmap {pid} {gid_args}): "
            f"{error or 'no output'}; check /etc/subuid and /etc/subgid, and that "
            "newuidmap and newgidmap are setuid root -- inside a container, where a setuid "
            "helper lacks CAP_SYS_ADMIN, give them file capabilities instead: chmod 0755 "
            "and setcap cap_setuid=ep /usr/bin/newuidmap, cap_setgid=ep /usr/bin/newgidmap")
    in_user_namespace.cache_clear()


def private_mounts() -> None:
    """For root: move this (single-threaded) process into a mount namespace of its own,
    whose mounts (a lazy layer's FUSE file system, builder.lazyfs) no other process sees
    and which go with it, even after a SIGKILL; the mounts it starts with stay, made
    private there so that nothing propagates back. Best effort: where it cannot, the
    process stays where it was (its mounts are then undone when the build ends)."""
    if os.geteuid() != 0 or threading.active_count() > 1:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) == 0:
        libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)


def become_root() -> None:
    """For a command that must run as root: root gets a mount namespace of its own
    (:func:`private_mounts`); anyone else enters a user namespace
    (:func:`enter_user_namespace`) or gets its error as one ``ERROR:`` line on stderr and
    exit code 1."""
    if os.geteuid() == 0:
        private_mounts()
        return
    try:
        enter_user_namespace()
    except UserNamespaceUnavailable as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)
