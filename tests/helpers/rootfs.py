"""A tiny root filesystem made from Debian's statically linked busybox (busybox-static).

Layout written by ``make_busybox_rootfs``::

    bin/busybox            the static binary, mode 0755
    bin/<applet>           relative symlink -> busybox, one per ``busybox --list`` entry
    etc/passwd, etc/group  root and nobody
    dev/ proc/ sys/ root/  empty mount points and home
    tmp/                   mode 1777
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

__all__ = ["BUSYBOX", "find_busybox", "make_busybox_rootfs"]

# busybox-static installs /bin/busybox; the dynamically linked `busybox` package puts one
# in the same place, which would not run in an empty rootfs, so it is checked below.
BUSYBOX = "/bin/busybox"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def find_busybox() -> str | None:
    """The path of a statically linked busybox, or None if there is none."""
    for candidate in (BUSYBOX, shutil.which("busybox")):
        if candidate and os.access(candidate, os.X_OK) and _is_static(Path(candidate)):
            return candidate
    return None


def _is_static(path: Path) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum)
    )


def make_busybox_rootfs(dest: Path) -> Path:
    """Create a busybox root filesystem in ``dest`` (created if absent) and return ``dest``.

    Raises FileNotFoundError when no static busybox is installed (Debian: busybox-static).
    """
    busybox = find_busybox()
    if busybox is None:
        raise FileNotFoundError("no statically linked busybox; install busybox-static")
    dest = Path(dest)
    for d in ("bin", "etc", "dev", "proc", "sys", "root", "tmp"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    target = dest / "bin" / "busybox"
    shutil.copyfile(busybox, target)
    os.chmod(target, 0o755)
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in sorted(set(applets)):
        if applet == "busybox" or "/" in applet:
            continue
        link = dest / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    return dest
