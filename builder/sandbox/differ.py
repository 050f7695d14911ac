"""The snapshot differ: a step's changes in overlayfs upper-dir format, without overlayfs.

Where overlayfs cannot be mounted (or ``--differ snapshot`` asks for it) a step runs in a
flattened copy of its layers (``RootfsMode.COPY``). :func:`take_snapshot` records the
copy before the command; afterwards :func:`diff_snapshot` compares it with the result,
and :func:`write_upper` lays the changes out exactly as an overlayfs upper directory
would hold them -- new and changed entries, 0/0 character devices for removed paths,
``trusted.overlay.opaque=y`` on directories that replaced something -- so the layer
writer, the snapshot store and the cache treat both modes alike and the same step gives
the same layer.

Changed files are *moved* out of the copy (it is scratch and is removed afterwards), so
this costs a walk of the tree, not a second copy of its data.

A directory removed and made again (``rm -r d && mkdir d``) must be seen as replaced
(opaque, as overlayfs marks it), but a filesystem may give the new directory the old
one's inode number. :func:`hold_directories` keeps every directory of the snapshot open
(``O_PATH``) while the command runs, so no inode number of the snapshot can be reused
and a replaced directory always shows a new one.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import stat
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

from ..layers import Changeset, Entry, EntryKind, Snapshot, diff_snapshot, take_snapshot
from ..layers.longpath import short
from .userns import overlay_xattr
from .whiteouts import make_whiteout

__all__ = ["forgive_touched", "hold_directories", "take_snapshot", "upper_from_copy",
           "write_upper"]


# Descriptors left free by hold_directories for everything else the build opens.
_SPARE_DESCRIPTORS = 256


@contextlib.contextmanager
def hold_directories(before: Snapshot, root: Path) -> Iterator[int]:
    """Keep the snapshot's directories open (see the module docstring); yields how many.

    When they do not fit under the soft open-file limit, it is raised to the hard one (as
    Go programs such as BuildKit do at start) and left raised: steps in other threads
    hold directories of their own meanwhile, so this step's need alone is not enough.
    Best effort: past the limit the remaining directories are not held, and
    ``_SPARE_DESCRIPTORS`` stay free for the rest of the build.
    """
    dirs = [rel for rel, rec in before.items() if rec.is_dir]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    want = in_use + len(dirs) + _SPARE_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and want > soft:
        new = want if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY:
        dirs = dirs[:max(0, soft - in_use - _SPARE_DESCRIPTORS)]
    fds: list[int] = []
    try:
        for rel in dirs:
            try:
                fds.append(os.open(root / rel, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW))
            except OSError:
                break  # out of descriptors: hold what we have
        yield len(fds)
    finally:
        for fd in fds:
            os.close(fd)


def forgive_touched(before: Snapshot, root: Path, touched: Mapping[str, object]) -> Snapshot:
    """``before`` with the ctime of each directory the sandbox itself touched (to make
    and remove a mount point, then put its times back) set to its ctime now, when
    nothing else about it changed: overlayfs drops such a pure copy-up from the upper
    dir, and the differ must not see it as a change either."""
    out = dict(before)
    for rel in touched:
        old = before.get(rel)
        if not rel or old is None:
            continue
        try:
            st = os.lstat(root / rel)
        except OSError:
            continue
        if (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ino) == (
                old.mode, old.uid, old.gid, old.mtime_ns, old.ino):
            out[rel] = replace(old, ctime_ns=st.st_ctime_ns)
    return out


def _meta(path: Path, mode: int, uid: int, gid: int,
          xattrs: tuple[tuple[str, bytes], ...], symlink: bool = False) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    if not symlink:
        os.chmod(path, mode)
    for name, value in xattrs:
        try:
            os.setxattr(path, name, value, follow_symlinks=False)
        except OSError:
            pass  # the upper dir's filesystem lacks that xattr namespace


def write_upper(changes: Changeset, upper: Path) -> None:
    """Lay ``changes`` out in overlayfs upper-dir format in the new directory ``upper``.

    Regular files are moved from their :attr:`Entry.source`; everything else is made
    anew with the entry's owner, mode, xattrs and mtime.
    """
    upper.mkdir()
    os.chmod(upper, 0o755)  # as the runner's upper dir: a flattened copy's root gets it
    dirs: list[tuple[Path, int]] = []
    for entry in changes.entries:
        # an image's path may be longer than the kernel takes below the storage's
        with short(upper / entry.path) as at:
            _write_entry(entry, upper, Path(at))
        if entry.kind is EntryKind.DIR:
            dirs.append((upper / entry.path, entry.mtime_ns))
    for whiteout in changes.whiteouts:
        with short(upper / whiteout.path) as at:
            if whiteout.opaque:
                os.setxattr(at, overlay_xattr("opaque"), b"y", follow_symlinks=False)
            else:
                make_whiteout(Path(at), whiteout.path)
    # directory times last: making their children changed them
    for path, mtime in reversed(dirs):
        with short(path) as at:
            os.utime(at, ns=(mtime, mtime), follow_symlinks=False)


def _write_entry(entry: Entry, upper: Path, dst: Path) -> None:
    """One entry of :func:`write_upper` at ``dst`` (its name in ``upper``, shortened)."""
    if entry.kind is EntryKind.DIR:
        dst.mkdir()
        _meta(dst, entry.mode, entry.uid, entry.gid, entry.xattrs)
        return
    if entry.kind is EntryKind.FILE:
        assert entry.source is not None
        with short(entry.source) as source:
            os.rename(source, dst)  # keeps content, owner, mode, xattrs, times
        return
    if entry.kind is EntryKind.HARDLINK:
        with short(upper / entry.link) as first:
            os.link(first, dst)
        return
    if entry.kind is EntryKind.SYMLINK:
        os.symlink(entry.link, dst)
        _meta(dst, entry.mode, entry.uid, entry.gid, (), symlink=True)
    else:
        fmt = {EntryKind.CHAR: stat.S_IFCHR, EntryKind.BLOCK: stat.S_IFBLK,
               EntryKind.FIFO: stat.S_IFIFO}[entry.kind]
        os.mknod(dst, fmt | 0o600, os.makedev(entry.devmajor, entry.devminor))
        _meta(dst, entry.mode, entry.uid, entry.gid, entry.xattrs)
    os.utime(dst, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def upper_from_copy(before: Snapshot, root: Path, upper: Path) -> None:
    """The changes from ``before`` to the tree at ``root``, written to ``upper`` in
    upper-dir format; ``root`` is removed (its changed files now live in ``upper``)."""
    write_upper(diff_snapshot(before, root), upper)
    shutil.rmtree(root)
