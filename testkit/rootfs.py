"""A minimal root filesystem for tests: Debian's static busybox and its applets.

``make_busybox_rootfs(dest)`` writes::

    dest/bin/busybox            the host's static busybox (Debian package busybox-static)
    dest/bin/<applet>, dest/sbin/<applet>, dest/usr/bin/<applet>, ...
                                relative symlinks to it, one per applet (`busybox --list-full`)
    dest/etc/passwd, group      root, nobody and a test user ``tester`` (1000:1000,
                                also a member of group ``staff``, gid 50)
    dest/tmp (1777), dest/root, dest/home/tester, dest/proc, dest/sys, dest/dev

Tests that need it call :func:`busybox_path` first: it fails when CI is set and busybox is
missing, and skips otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .tools import missing

__all__ = ["BUSYBOX_CANDIDATES", "busybox_path", "find_busybox", "make_busybox_rootfs"]

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
tester:x:1000:1000:tester:/home/tester:/bin/sh
"""

GROUP = """\
root:x:0:
staff:x:50:tester
nogroup:x:65534:
tester:x:1000:
"""


def find_busybox() -> str | None:
    """The path of a statically linked busybox, or None if there is none."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and _is_static(path):
            return candidate
    return None


def busybox_path() -> Path:
    """The host's busybox, if it is statically linked (it must run in an empty root)."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and _is_static(path):
            return path
    missing("a static busybox is not installed (apt-get install busybox-static)")


def _is_static(path: Path) -> bool:
    # A dynamically linked ELF names its loader in a PT_INTERP header; "/lib" appears then.
    head = path.read_bytes()[:4096]
    return head.startswith(b"\x7fELF") and b"ld-linux" not in head


def make_busybox_rootfs(dest: Path, busybox: Path | None = None,
                        applets_of: Path | None = None) -> Path:
    """Create a busybox root filesystem in ``dest`` (created if needed); return ``dest``.
    ``applets_of``: the busybox that lists the applets (another architecture's ``busybox``
    cannot run here without an emulator; the same Debian version has the same applets)."""
    busybox = busybox or busybox_path()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "bin").mkdir(exist_ok=True)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    applets = subprocess.run(
        [str(applets_of or busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = dest / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(dest / "bin" / "busybox", link.parent), link)
    for name in ("etc", "root", "home/tester", "proc", "sys", "dev", "var", "run"):
        (dest / name).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").mkdir(exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    if os.geteuid() == 0:
        os.chown(dest / "home/tester", 1000, 1000)
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    return dest
