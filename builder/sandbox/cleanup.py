"""After a step: remove what the sandbox itself put into the step's changes.

Mount points the sandbox had to create (for cache, secret, tmpfs and bind mounts, /proc,
/dev, /sys, /etc/hosts, /etc/resolv.conf) are removed if still empty, deepest first --
BuildKit does the same -- except the workdir and its parents, which are real content.
Directories a mount point was created in get their times back, and under overlayfs a
directory that was only copied up for that reason (now empty, not opaque, same metadata
as below) is dropped from the upper dir. Then the scratch parts of ``state_dir`` go.

Finally the upper dir loses overlayfs' own bookkeeping xattrs (``trusted.overlay.origin``,
``impure``, ``uuid``, ...; ``user.overlay.*`` in a user namespace): afterwards it holds
content, 0/0 whiteouts and the opaque marks, nothing else -- what a layer writer needs to
read. An opaque mark on a directory with nothing below it in the lowers is dropped too:
with ``index=on`` overlayfs marks every directory made in a merged directory opaque,
which hides nothing and would only add a ``.wh..wh..opq`` entry to the layer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .rootfs import RootfsLayout, RootfsMode, is_opaque, lower_stat
from .userns import overlay_xattr

__all__ = ["cleanup"]


def strip_overlay_xattrs(upper: os.PathLike[str] | str,
                         lowers: Sequence[os.PathLike[str]] | None = None) -> None:
    """Remove every ``trusted.overlay.*`` xattr (``user.overlay.*`` in a user namespace)
    but the opaque mark under ``upper``; with ``lowers``, also the opaque mark of a
    directory that hides nothing in them."""
    keep = overlay_xattr("opaque")
    prefix = overlay_xattr("")
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in ["", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name else dirpath
            with contextlib.suppress(OSError):
                for attr in os.listxattr(path, follow_symlinks=False):
                    if attr == keep and name in dirnames and lowers is not None:
                        rel = os.path.relpath(path, upper)
                        if lower_stat([Path(p) for p in lowers], rel) is None:
                            os.removexattr(path, attr, follow_symlinks=False)
                    elif attr.startswith(prefix) and attr != keep:
                        os.removexattr(path, attr, follow_symlinks=False)


def _drop_pure_copy_up(layout: RootfsLayout, rel: str) -> None:
    upper = layout.upper / rel
    if any(upper.iterdir()) or is_opaque(upper):
        return
    below = lower_stat(layout.lowers, rel)
    st = os.lstat(upper)
    if below is not None and (below.st_mode, below.st_uid, below.st_gid, below.st_mtime_ns) == (
        st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns
    ):
        upper.rmdir()


def cleanup(
    layout: RootfsLayout, reports: Sequence[dict[str, object]], workdir: str
) -> None:
    """Remove scratch dirs and the mount points the sandbox made from the changes."""
    stubs: list[str] = []
    touched: dict[str, list[int]] = {}
    for report in reports:
        found = report.get("stubs")
        if isinstance(found, list):
            stubs = [str(s) for s in found]
        if isinstance(report.get("touched"), dict):
            touched = report["touched"]  # type: ignore[assignment]
    keep = {workdir.strip("/")}
    parts = workdir.strip("/").split("/")
    keep |= {"/".join(parts[:i]) for i in range(1, len(parts))}
    base = layout.changes
    for rel in sorted(set(stubs) - keep, key=lambda s: s.count("/"), reverse=True):
        path = base / rel
        with contextlib.suppress(OSError):  # not empty any more: the step put content there
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()
    # Making a mount point inside an image directory touched it (and, with overlayfs,
    # copied it up): put its times back, and drop a copy-up that is now identical to
    # the directory below, so the mount leaves no trace in the layer.
    for rel in sorted(touched, key=lambda s: s.count("/"), reverse=True):
        path = base / rel if rel else base
        with contextlib.suppress(OSError):
            if not path.is_dir() or path.is_symlink():
                continue
            atime, mtime = touched[rel]
            os.utime(path, ns=(atime, mtime), follow_symlinks=False)
            if rel and layout.mode is RootfsMode.OVERLAY and rel not in keep:
                _drop_pure_copy_up(layout, rel)
    if layout.mode is RootfsMode.OVERLAY and layout.upper.is_dir():
        strip_overlay_xattrs(layout.upper, layout.lowers)
    for scratch in (layout.work, layout.run, layout.links, layout.state_dir / "merged"):
        if layout.mode is RootfsMode.COPY and scratch == layout.merged:
            continue
        shutil.rmtree(scratch, ignore_errors=True)
