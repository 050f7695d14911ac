"""Turning ``lstat`` results into :class:`Entry` objects: shared by the overlay reader,
the snapshot differ and the directory importer, so all three describe a file the same way.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import defaultdict
from collections.abc import Iterator

from .changeset import Entry, EntryKind, path_sort_key
from .errors import ChangesetError
from .longpath import LIMIT, NAME_MAX, short

__all__ = [
    "InodeKey",
    "entry_from_stat",
    "join_hardlinks",
    "read_xattrs",
    "walk",
]

# overlayfs's bookkeeping (trusted.* normally, user.* when mounted with userxattr) means
# nothing inside an image; SELinux labels belong to the host that ran the step.
_SKIPPED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
_SKIPPED_XATTRS = frozenset({"security.selinux"})

InodeKey = tuple[int, int]  # (st_dev, st_ino)


def read_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    """The xattrs of ``path`` (not following a symlink) that belong in a layer, by name."""
    with short(path) as name:
        return _read_xattrs(name)


def _read_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return ()
        raise
    out = []
    for name in sorted(names):
        if name in _SKIPPED_XATTRS or name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed meanwhile
                raise
    return tuple(out)


def entry_from_stat(rel: str, abspath: str, st: os.stat_result) -> Entry | None:
    """The Entry for ``rel`` whose ``lstat`` is ``st``; None for a socket (tar has no
    socket type and a socket means nothing once its process is gone)."""
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFREG:
        kind, size, source = EntryKind.FILE, st.st_size, abspath
    elif fmt == stat.S_IFDIR:
        kind, size, source = EntryKind.DIR, 0, None
    elif fmt == stat.S_IFLNK:
        kind, size, source = EntryKind.SYMLINK, 0, None
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        kind = EntryKind.CHAR if fmt == stat.S_IFCHR else EntryKind.BLOCK
        size, source = 0, None
    elif fmt == stat.S_IFIFO:
        kind, size, source = EntryKind.FIFO, 0, None
    elif fmt == stat.S_IFSOCK:
        return None
    else:
        raise ChangesetError(f"{abspath!r} has an unknown file type {fmt:#o}; remove it")
    is_dev = kind in (EntryKind.CHAR, EntryKind.BLOCK)
    return Entry(
        path=rel, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        mtime_ns=st.st_mtime_ns, size=size, source=source,
        link=_readlink(abspath) if kind is EntryKind.SYMLINK else "",
        devmajor=os.major(st.st_rdev) if is_dev else 0,
        devminor=os.minor(st.st_rdev) if is_dev else 0,
        xattrs=read_xattrs(abspath),
    )


def _readlink(path: str) -> str:
    with short(path) as name:
        return os.readlink(name)


def join_hardlinks(files: list[tuple[Entry, InodeKey]]) -> list[Entry]:
    """Replace every regular file that shares an inode with an earlier one (in tar
    order) by a HARDLINK entry to that first path. Only links within ``files`` count:
    a link whose partner is outside the layer stays a plain file."""
    groups: dict[InodeKey, list[Entry]] = defaultdict(list)
    for entry, key in files:
        groups[key].append(entry)
    out: list[Entry] = []
    for members in groups.values():
        members.sort(key=lambda e: path_sort_key(e.path))
        first = members[0]
        out.append(first)
        for other in members[1:]:
            out.append(Entry(
                path=other.path, kind=EntryKind.HARDLINK, mode=other.mode, uid=other.uid,
                gid=other.gid, mtime_ns=other.mtime_ns, link=first.path,
                xattrs=other.xattrs,
            ))
    return out


def walk(root: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """Yield ``(rel, abspath, lstat)`` for everything under ``root`` (not root itself),
    never following symlinks; a directory is yielded before its contents. ``abspath`` may
    be longer than the kernel takes (the image's path below a long one): name it through
    :func:`.longpath.short`."""
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        children: list[tuple[str, os.stat_result]] = []
        try:
            with short(abs_dir, NAME_MAX + 1) as usable, os.scandir(usable) as it:
                for d in sorted(it, key=lambda d: d.name):
                    try:
                        children.append((d.name, d.stat(follow_symlinks=False)))
                    except OSError as exc:
                        raise _too_long(exc, f"{rel_dir}/{d.name}".lstrip("/")) from exc
        except OSError as exc:
            raise _too_long(exc, rel_dir) from exc
        for name, st in reversed(children):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if len(os.fsencode(rel)) + 1 > LIMIT:  # no program in the image could name it
                raise _too_long(OSError(errno.ENAMETOOLONG, "File name too long"), rel)
            path = os.path.join(abs_dir, name)
            yield rel, path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append((rel, path))


def _too_long(exc: OSError, rel: str) -> OSError | ChangesetError:
    """A path nested deeper than this machine can name (PATH_MAX inside the image: the
    build's own directory before it does not count, :mod:`.longpath`) as an error that
    says so, the path cut short; others as they are."""
    if exc.errno != errno.ENAMETOOLONG:
        return exc
    shown = f"/{rel}" if len(rel) <= 120 else f"/{rel[:60]}...{rel[-50:]}"
    return ChangesetError(
        f"a path the step made is too long for this machine to read back ({len(rel) + 1} "
        f"bytes, more than PATH_MAX, {LIMIT}, allows inside the image): {shown}; "
        "nest fewer or shorter directories")
