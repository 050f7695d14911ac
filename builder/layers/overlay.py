"""A changeset read from an overlayfs upper directory, without walking the lower layers.

The kernel's representation (Documentation/filesystems/overlayfs.rst) maps onto the OCI
image spec's layer.md like this:

===============================================  ==========================================
upper directory                                   layer
===============================================  ==========================================
character device 0/0 ``name``                     whiteout ``.wh.name``
zero-size file with xattr ``overlay.whiteout``    whiteout ``.wh.name`` (kernels >= 6.7)
directory with xattr ``overlay.opaque`` = ``y``   the directory + ``dir/.wh..wh..opq``
anything else                                     the entry itself (copied up or new)
===============================================  ==========================================

The xattrs live in the ``trusted.overlay.`` namespace, or ``user.overlay.`` when the
overlay is mounted with ``userxattr``; both are read. overlayfs's own xattrs are never
copied into the layer.

Two overlay features put data outside the upper directory and are refused with
:class:`OverlayFeatureUnsupported`: ``redirect_dir`` (a renamed lower directory records
only the rename) and ``metacopy`` (a copied-up file holds only metadata). Mount the
overlay with ``redirect_dir=off,metacopy=off``: a directory rename then fails with EXDEV
and tools (``mv``, ``rename`` in most runtimes) fall back to copying, which an upper
directory records in full.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .changeset import Changeset, Entry, EntryKind, Whiteout
from .errors import OverlayFeatureUnsupported
from .scan import InodeKey, entry_from_stat, join_hardlinks, walk

__all__ = ["OVERLAY_MOUNT_OPTIONS", "changeset_from_upper"]

# What a caller should pass to `mount -t overlay` so that every upper dir can be read.
OVERLAY_MOUNT_OPTIONS = "redirect_dir=off,metacopy=off,index=off"

_PREFIXES = ("trusted.overlay.", "user.overlay.")


class _OverlayAttrs:
    """overlayfs's xattrs on one upper entry (one listxattr; values read on demand)."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            names = []
        self.names = {n.split(".", 2)[2]: n for n in names if n.startswith(_PREFIXES)}

    def get(self, name: str) -> bytes | None:
        full = self.names.get(name)
        if full is None:
            return None
        try:
            return os.getxattr(self.path, full, follow_symlinks=False)
        except OSError:
            return None


def changeset_from_upper(upper: Path | str) -> Changeset:
    """The changeset recorded in the overlayfs upper directory ``upper``.

    Reads only ``upper``. Contract: the overlay is unmounted, or at least nothing writes
    to it, while the changeset is created and its layer written (file content is read
    from ``upper`` later, by the tar writer). Raises OverlayFeatureUnsupported for
    redirect or metacopy entries (see the module docstring).
    """
    root = os.fspath(upper)
    entries: list[Entry] = []
    files: list[tuple[Entry, InodeKey]] = []
    whiteouts: list[Whiteout] = []
    for rel, abspath, st in walk(root):
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFCHR and st.st_rdev == 0:
            whiteouts.append(Whiteout(rel))
            continue
        attrs = _OverlayAttrs(abspath)
        if fmt == stat.S_IFREG and st.st_size == 0 and "whiteout" in attrs.names:
            whiteouts.append(Whiteout(rel))
            continue
        if "redirect" in attrs.names:
            raise OverlayFeatureUnsupported(
                rel, "redirect_dir (a renamed lower directory)",
                f"mount the overlay with -o {OVERLAY_MOUNT_OPTIONS}",
            )
        if fmt == stat.S_IFREG and "metacopy" in attrs.names:
            raise OverlayFeatureUnsupported(
                rel, "metacopy (metadata-only copy-up)",
                f"mount the overlay with -o {OVERLAY_MOUNT_OPTIONS}",
            )
        entry = entry_from_stat(rel, abspath, st)
        if entry is None:
            continue
        if entry.kind is EntryKind.DIR and attrs.get("opaque") == b"y":
            whiteouts.append(Whiteout(rel, opaque=True))
        if entry.kind is EntryKind.FILE and st.st_nlink > 1:
            files.append((entry, (st.st_dev, st.st_ino)))
        else:
            entries.append(entry)
    entries.extend(join_hardlinks(files))
    return Changeset.create(entries, whiteouts)
