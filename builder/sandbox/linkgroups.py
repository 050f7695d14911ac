"""Hard links across a step's copy-up: every name of a link group keeps showing the file.

A file with several names (hard links) in a lower layer is one inode there. When a step
changes it through one name, overlayfs copies that name up; with ``index=on`` every other
name the step touches is linked to the same upper inode, so the step itself sees one file.
But a name the step never touched is still only in the lower layer: the layer would carry
the change under one name while the other names kept the old file. ``docker build`` keeps
the group whole (the step sees one inode, the layer lists every name of it), and so does
the snapshot differ (the flattened copy keeps the links).

:func:`relink_copied_up` repairs the upper dir after the step, while overlayfs' xattrs are
still there: for each regular file the step copied up from a lower file with more than one
name (its ``trusted.overlay.origin`` file handle is that lower file's), every other name
of that inode in the same lower layer that the step left alone and that is still visible
(no whiteout, replaced or opaque directory above it, in the upper dir or a higher lower)
is hard-linked to the copied-up file in the upper dir. Parent directories are copied up
as overlayfs does (owner, mode, xattrs and times of the lower directory), and upper
directories that get a new name keep their times. The layer then holds the group as one
file plus hard-link entries.

A copied-up file the step renamed (``mv``) keeps its group too: its origin no longer
matches the lower file at its new path, but its inode is still linked into overlayfs'
index (an extra link count), which ``index=on`` makes only for lower files with several
names; the lowers' hard-linked files are then searched for that origin. A file the step
replaced rather than changed (``sed -i`` writes a new file and renames it over the old
name) has no origin: its link is broken, as in Docker. Without ``index=on`` overlayfs
records no origin here and nothing is repaired.

Every path is named through :func:`..layers.longpath.short`: an image's deep path below a
long storage directory passes PATH_MAX, and a link group there is kept all the same.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from ..layers.longpath import short
from ..layers.scan import read_xattrs, walk
from .rootfs import find_in_lowers, is_opaque
from .userns import overlay_xattr

__all__ = ["has_link_groups", "relink_copied_up"]

# lower dir -> (its inode, ctime) and whether it holds a hard-linked regular file
_link_groups: dict[str, tuple[tuple[int, int], bool]] = {}

_MAX_HANDLE = 128  # MAX_HANDLE_SZ


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * _MAX_HANDLE)]


_libc = ctypes.CDLL(None, use_errno=True)


def _handle(path: Path) -> tuple[int, bytes] | None:
    """``(type, bytes)`` of the file handle of ``path`` (name_to_handle_at(2)), or None."""
    fh = _FileHandle(handle_bytes=_MAX_HANDLE)
    mount_id = ctypes.c_int()
    at_fdcwd = -100
    with short(path) as at:
        if _libc.name_to_handle_at(at_fdcwd, os.fsencode(at), ctypes.byref(fh),
                                   ctypes.byref(mount_id), 0) != 0:
            return None
    return fh.handle_type, bytes(fh.f_handle[:fh.handle_bytes])


def _origin(path: str) -> tuple[int, bytes] | None:
    """The lower file handle in an upper entry's origin xattr (overlayfs' ``struct
    ovl_fb``: version, magic 0xfb, length, flags, handle type, fs uuid[16], handle)."""
    try:
        with short(path) as at:
            fb = os.getxattr(at, overlay_xattr("origin"), follow_symlinks=False)
    except OSError:
        return None
    if len(fb) < 21 or fb[1] != 0xFB or fb[2] > len(fb):
        return None
    return fb[4], bytes(fb[21:fb[2]])


def _linked_names(lower: Path) -> dict[tuple[int, int], list[str]]:
    """Every regular file of the layer ``lower`` with more than one name, by inode."""
    names: dict[tuple[int, int], list[str]] = {}
    for rel, _abspath, st in walk(os.fspath(lower)):
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            names.setdefault((st.st_dev, st.st_ino), []).append(rel)
    return names


def has_link_groups(lower: Path) -> bool:
    """Does the layer ``lower`` hold a regular file with more than one name? (Walked
    once per directory: layer snapshots do not change.)"""
    st = os.stat(lower)
    key, known = os.fspath(lower), _link_groups.get(os.fspath(lower))
    if known is not None and known[0] == (st.st_ino, st.st_ctime_ns):
        return known[1]
    found = any(stat.S_ISREG(s.st_mode) and s.st_nlink > 1
                for _rel, _abspath, s in walk(os.fspath(lower)))
    _link_groups[key] = ((st.st_ino, st.st_ctime_ns), found)
    return found


def _left_alone(upper: Path, name: str) -> bool:
    """Did the step leave ``name`` (and what lies above it) out of the upper dir?"""
    parts = name.split("/")
    cur = upper
    for part in parts[:-1]:
        cur = cur / part
        try:
            with short(cur) as at:
                st = os.lstat(at)
                if not stat.S_ISDIR(st.st_mode) or is_opaque(Path(at)):
                    return False  # removed or replaced above the name: the name is gone
        except FileNotFoundError:
            return True
    with short(cur / parts[-1]) as at:
        return not os.path.lexists(at)


class _Times:
    """Directory times to put back once every link is made."""

    def __init__(self) -> None:
        self.times: dict[Path, tuple[int, int]] = {}

    def keep(self, path: Path, st: os.stat_result | None = None) -> None:
        if path not in self.times:
            if st is None:
                with short(path) as at:
                    st = os.lstat(at)
            self.times[path] = (st.st_atime_ns, st.st_mtime_ns)

    def restore(self) -> None:
        for path, ns in self.times.items():
            with short(path) as at:
                os.utime(at, ns=ns, follow_symlinks=False)


def _copy_up_parents(upper: Path, lowers: Sequence[Path], name: str,
                     times: _Times) -> Path | None:
    """Make the missing parent directories of ``name`` in ``upper`` as overlayfs copies
    them up; returns the parent directory (None if a lower one is not a directory)."""
    cur, rel = upper, ""
    for part in name.split("/")[:-1]:
        parent, cur = cur, cur / part
        rel = f"{rel}/{part}" if rel else part
        with short(cur) as at:
            if os.path.lexists(at):
                continue
        found = find_in_lowers(lowers, rel)
        if found is None or not stat.S_ISDIR(found[2].st_mode):
            return None  # cannot be: the name was found below it
        below = found[2]
        times.keep(parent)
        xattrs = read_xattrs(os.fspath(found[1]))
        with short(cur) as at:
            os.mkdir(at)
            os.chown(at, below.st_uid, below.st_gid)
            os.chmod(at, stat.S_IMODE(below.st_mode))
            for key, value in xattrs:
                try:
                    os.setxattr(at, key, value)
                except OSError:
                    pass  # the upper dir's filesystem lacks that xattr namespace
        times.keep(cur, below)
    return cur


def relink_copied_up(upper: Path, lowers: Sequence[Path]) -> int:
    """Link the untouched names of copied-up link groups into ``upper`` (see the module
    docstring); returns how many names were linked. The overlay must be unmounted."""
    copied: list[tuple[str, Path, Path, os.stat_result]] = []
    upper_names: dict[tuple[int, int], int] = {}
    with_origin: list[tuple[str, str, os.stat_result, tuple[int, bytes]]] = []
    for rel, abspath, st in walk(os.fspath(upper)):
        # A copy-up of a lower file with several names is also linked into the index,
        # so only files with two links or more need a look at their xattrs.
        if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            continue
        key = (st.st_dev, st.st_ino)
        upper_names[key] = upper_names.get(key, 0) + 1
        origin = _origin(abspath)
        if origin is not None:
            with_origin.append((rel, abspath, st, origin))
    renamed: dict[tuple[int, bytes], tuple[str, Path]] = {}
    for rel, abspath, st, origin in with_origin:
        found = find_in_lowers(lowers, rel)
        if found is not None:
            lower, path, below = found
            if stat.S_ISREG(below.st_mode) and below.st_nlink > 1 and _handle(path) == origin:
                copied.append((rel, Path(abspath), lower, below))
                continue
        if st.st_nlink > upper_names[(st.st_dev, st.st_ino)]:
            renamed.setdefault(origin, (rel, Path(abspath)))  # linked into the index
    groups: dict[Path, dict[tuple[int, int], list[str]]] = {}
    for lower in lowers if renamed else ():
        groups[lower] = _linked_names(lower)
        for names in groups[lower].values():
            path = lower / names[0]
            handle = _handle(path)
            if handle in renamed:
                rel, source = renamed.pop(handle)
                with short(path) as at:
                    copied.append((rel, source, lower, os.lstat(at)))
        if not renamed:
            break
    times = _Times()
    linked = 0
    for rel, source, lower, below in copied:
        if lower not in groups:
            groups[lower] = _linked_names(lower)
        for name in groups[lower].get((below.st_dev, below.st_ino), ()):
            if name == rel or not _left_alone(upper, name):
                continue
            visible = find_in_lowers(lowers, name)
            if visible is None or visible[0] != lower or (
                    visible[2].st_dev, visible[2].st_ino) != (below.st_dev, below.st_ino):
                continue  # a higher layer removed or replaced this name
            parent = _copy_up_parents(upper, lowers, name, times)
            if parent is None:
                continue
            times.keep(parent)
            with short(source) as src, short(upper / name) as dest:
                os.link(src, dest)
            linked += 1
    times.restore()
    return linked
