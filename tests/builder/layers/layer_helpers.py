"""Helpers for the layer tests: sample trees, tree comparison, overlay mounts."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest


def need_tool(name: str) -> str:
    """The path of ``name``; skip without it, but fail when CI is set."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (install it: see tests/run)")
        pytest.skip(f"{name} not installed")
    return path


def tree_state(root: Path, *, mtimes: bool = False) -> dict[str, tuple]:
    """Everything a layer should reproduce about the tree at ``root``, per path."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            fmt = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body: object = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                body = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                body = None
            try:
                names = sorted(n for n in os.listxattr(p, follow_symlinks=False)
                               if not n.startswith(("trusted.overlay.", "security.selinux")))
                xattrs = tuple((n, os.getxattr(p, n, follow_symlinks=False)) for n in names)
            except OSError:
                xattrs = ()
            mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
            row = (fmt, mode, st.st_uid, st.st_gid, body, xattrs)
            if mtimes and not stat.S_ISLNK(st.st_mode):
                row += (st.st_mtime_ns // 1_000_000_000,)
            out[rel] = row
    return out


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    groups: dict[tuple[int, int], set[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(p, root))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def make_sample_tree(root: Path) -> None:
    """A tree with every kind of entry a layer carries."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(200_000))
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-link")
    os.symlink("tool", root / "bin" / "alias")
    os.symlink("/etc/hosts", root / "hosts-abs")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 90)).write_text("long name\n")
    (root / "ünïcode-名前").write_text("utf-8 name\n")
    (root / "empty").write_bytes(b"")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "etc" / "hosts", "user.pybuild.test", b"\x00\xffbinary")
    if os.geteuid() == 0:
        os.setxattr(root / "bin" / "tool", "trusted.pybuild", b"trusted-value")
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(root / "null", 0o666)
        os.chown(root / "etc" / "hosts", 1234, 5678)


class Overlay:
    """A mounted overlay (lower, upper, work, merged) in ``base``."""

    def __init__(self, base: Path, lower: Path, options: str = "") -> None:
        self.lower = lower
        self.upper = base / "upper"
        self.work = base / "work"
        self.merged = base / "merged"
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        opts = f"lowerdir={lower},upperdir={self.upper},workdir={self.work}"
        if options:
            opts += "," + options
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.merged)],
                              check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            msg = f"cannot mount overlayfs: {proc.stderr.strip()}"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        self.mounted = True

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.merged)], check=True)
            self.mounted = False
