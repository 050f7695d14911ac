"""Foreign platforms for tests: another architecture's busybox, and its emulator.

- :func:`foreign_busybox` downloads Debian's ``busybox-static`` for another architecture
  (``dpkg --add-architecture``, ``apt-get download``, ``dpkg-deb -x``) into a cache
  directory and returns the binary; a second call finds it there.
- :func:`ensure_emulator` makes sure the kernel runs that architecture's programs under
  qemu-user-static: it mounts binfmt_misc when it is not mounted and enables Debian's
  entry (``update-binfmts --enable qemu-<arch>``, flag F) when none is registered. It
  never disables or removes an entry: other users of the machine may rely on them.

Both need root and Debian's tools; a missing one goes through :func:`testkit.tools.missing`
(skip on a developer's machine, fail in CI).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from .tools import missing

__all__ = ["BINFMT_MISC", "QEMU_NAMES", "ensure_emulator", "foreign_busybox"]

BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")
# OCI architecture -> the name qemu and Debian's binfmt entries give it.
QEMU_NAMES = {"arm64": "aarch64", "amd64": "x86_64", "arm": "arm", "386": "i386",
              "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


def foreign_busybox(arch: str, cache: Path) -> Path:
    """Debian's static busybox for ``arch`` (a Debian architecture name: arm64, armhf...),
    extracted under ``cache/busybox-<arch>/``; returns the binary's path."""
    dest = cache / f"busybox-{arch}"
    binary = dest / "bin" / "busybox"
    if binary.is_file():
        return binary
    for tool in ("dpkg", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed: a Debian machine is needed to download "
                    f"busybox-static:{arch}")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download for parallel test sessions
        if binary.is_file():
            return binary
        foreign = _run("dpkg", "--print-foreign-architectures").stdout.split()
        if arch not in foreign:
            added = _run("dpkg", "--add-architecture", arch)
            if added.returncode != 0:
                missing(f"dpkg --add-architecture {arch} failed: {added.stderr.strip()}")
        download = cache / "download"
        shutil.rmtree(download, ignore_errors=True)
        download.mkdir()
        got = subprocess.run(["apt-get", "download", f"busybox-static:{arch}"], cwd=download,
                             capture_output=True, text=True, timeout=600)
        if got.returncode != 0:
            _run("apt-get", "update", "-qq")
            got = subprocess.run(["apt-get", "download", f"busybox-static:{arch}"],
                                 cwd=download, capture_output=True, text=True, timeout=600)
        debs = sorted(download.glob("busybox-static_*.deb"))
        if got.returncode != 0 or not debs:
            missing(f"apt-get download busybox-static:{arch} failed: {got.stderr.strip()}")
        tmp = cache / f".busybox-{arch}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp)], check=True, timeout=600)
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(tmp, dest)
        shutil.rmtree(download, ignore_errors=True)
    return binary


def _registered(arch: str) -> bool:
    entry = BINFMT_MISC / f"qemu-{QEMU_NAMES.get(arch, arch)}"
    try:
        text = entry.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1] for line in text.splitlines()
                  if line.startswith("flags:")), "")
    return text.startswith("enabled") and "F" in flags


def ensure_emulator(arch: str) -> None:
    """Make the kernel run ``arch`` (OCI name) programs under qemu-user-static."""
    if os.geteuid() != 0:
        missing("registering an emulator with binfmt_misc needs root")
    qemu = QEMU_NAMES.get(arch, arch)
    if shutil.which(f"qemu-{qemu}-static") is None or shutil.which("update-binfmts") is None:
        missing(f"qemu-{qemu}-static or update-binfmts is not installed "
                "(apt-get install qemu-user-static binfmt-support)")
    if not (BINFMT_MISC / "status").exists():
        mounted = _run("mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_MISC))
        if mounted.returncode != 0:
            missing(f"cannot mount binfmt_misc: {mounted.stderr.strip()}")
    if _registered(arch):
        return
    enabled = _run("update-binfmts", "--enable", f"qemu-{qemu}")
    if not _registered(arch):
        missing(f"update-binfmts --enable qemu-{qemu} did not register it with flag F: "
                f"{enabled.stderr.strip()}")
