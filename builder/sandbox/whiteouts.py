"""Whiteouts in extracted layers and in the upper dirs the snapshot differ writes.

A deletion is recorded as overlayfs records it: a 0/0 character device, which root of a
user namespace may make too. An overlayfs refuses to hold those on itself (for real root
as well), and a storage directory on one, as a container's own root filesystem is,
cannot mount overlays either, so pybuild reads its layers itself (the snapshot differ,
:mod:`builder.sandbox.flatten`). There a whiteout takes overlayfs' other form (kernels
from 6.7 read it; Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
directories"): an empty regular file with the xattr ``overlay.whiteout``
(:func:`~builder.sandbox.userns.overlay_xattr`) in a directory marked ``overlay.opaque``
= ``x``, which an overlayfs from 6.7 lets its users set (it stores them escaped), so
that a kernel overlay over such a layer sees the deletion too. :func:`is_whiteout` recognises both;
:func:`~builder.layers.overlay.changeset_from_upper` reads both into a layer's
``.wh.`` entries, so the layers are those of any other storage.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from ..layers.errors import WhiteoutUnsupported
from .userns import overlay_xattr

__all__ = ["is_whiteout", "make_whiteout"]


def make_whiteout(path: Path, name: str) -> None:
    """Record the deletion of the layer entry ``name`` at ``path`` (absent). Raises
    :class:`WhiteoutUnsupported` where the filesystem takes neither form."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        return
    except PermissionError as exc:
        refused = exc
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.setxattr(path, overlay_xattr("whiteout"), b"y", follow_symlinks=False)
        # overlayfs looks for such whiteouts only in a directory marked opaque=x (an
        # opaque=y one hides the layers below anyway); pybuild's readers need no mark
        try:
            os.getxattr(path.parent, overlay_xattr("opaque"), follow_symlinks=False)
        except OSError:
            os.setxattr(path.parent, overlay_xattr("opaque"), b"x", follow_symlinks=False)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise WhiteoutUnsupported(name, exc.strerror or str(exc)) from refused


def is_whiteout(path: Path | str, st: os.stat_result) -> bool:
    """Whether ``path`` (whose lstat is ``st``) is a whiteout, in either form."""
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    try:
        os.getxattr(path, overlay_xattr("whiteout"), follow_symlinks=False)
    except OSError:
        return False
    return True
