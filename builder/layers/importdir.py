"""Import a directory as a single layer: how a base image is made from a rootfs.

Every path under the directory becomes an entry (the directory itself is not one);
hard links inside it stay hard links, symlinks are stored as they are (relative
``bin/ls -> busybox`` and absolute ones alike), and no whiteouts are written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import BinaryIO

from .changeset import Changeset
from .chunked import DEFAULT_AVG_CHUNK, LayerBlob, write_layer
from .snapshot import changeset_of_tree

__all__ = ["import_directory", "make_busybox_rootfs"]


def import_directory(root: Path | str, out: BinaryIO, *, source_date_epoch: int | None = None,
                     owner: tuple[int, int] | None = None, compression: str = "gzip",
                     level: int | None = None, avg_size: int = DEFAULT_AVG_CHUNK,
                     workers: int | None = None) -> LayerBlob:
    """Write the tree at ``root`` as one chunked-frame layer to ``out``.

    ``owner=(uid, gid)`` records every entry with that owner instead of the one on disk
    (for a rootfs unpacked by an unprivileged user that should belong to root).
    """
    changeset = changeset_of_tree(root)
    if owner is not None:
        uid, gid = owner
        changeset = Changeset(
            tuple(dataclasses.replace(e, uid=uid, gid=gid) for e in changeset.entries),
            changeset.whiteouts,
        )
    return write_layer(changeset, out, source_date_epoch=source_date_epoch,
                       compression=compression, level=level, avg_size=avg_size,
                       workers=workers)


_BUSYBOX_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "localhost\n",
}


def make_busybox_rootfs(dest: Path | str, busybox: Path | str | None = None) -> Path:
    """Lay out a minimal rootfs around a *static* busybox binary in ``dest``.

    ``bin/busybox`` is a copy of ``busybox`` (default: the one on PATH, e.g. Debian's
    busybox-static); every applet it lists (``busybox --list-full``) is a *relative*
    symlink to it (``usr/bin/awk -> ../../bin/busybox``), so the tree works wherever it
    is mounted or unpacked. Also: ``etc/passwd``, ``etc/group``, ``etc/hostname``, an
    empty ``root``, ``tmp`` (1777) and empty ``proc``, ``sys``, ``dev`` mount points.
    Raises FileNotFoundError if no busybox is found.
    """
    src = busybox or shutil.which("busybox")
    if src is None:
        raise FileNotFoundError("no busybox on PATH: install busybox-static (Debian) first")
    root = Path(dest)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = subprocess.run([os.fspath(src), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath("bin/busybox", os.path.dirname(applet) or "."), link)
    for rel, text in _BUSYBOX_ETC.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    for d in ("root", "tmp", "proc", "sys", "dev"):
        (root / d).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    return root
