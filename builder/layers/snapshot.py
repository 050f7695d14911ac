"""A snapshot differ: the changeset of a step where overlayfs is unavailable.

Before the step, :func:`take_snapshot` records every path of the root filesystem as a
:class:`StatRecord`; after it, :func:`diff_snapshot` walks the tree again and produces the
same :class:`Changeset` an overlay upper directory would have given for the same change:

- a path that is new, or whose record differs in any field (type and mode, owner,
  size, mtime, ctime, inode/device, device number, link target, xattrs, and the content
  hash when hashing is on), is an entry;
- a directory that replaced what was there before (another type, or another inode) is an
  entry with an opaque whiteout, and everything under it is an entry — as overlayfs
  marks a directory created over a removed one opaque;
- the topmost removed path of a removed subtree is a whiteout;
- every ancestor directory of a change is an entry (overlayfs copies ancestors up).

Comparing inode and ctime as well as mtime and size catches a file replaced by a rename
or rewritten with its mtime restored. A file whose only change is a lower link count (and
the ctime that goes with it: another name of it was removed) is not a change, as
overlayfs, which never copies up a file for the removal of another of its names. Content
hashing (BLAKE3, ``hash_content=True``)
also catches a write that keeps size, mtime and ctime — only possible by setting the
clock; it reads every file twice and is off by default.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import blake3

from .changeset import Changeset, Entry, EntryKind, Whiteout
from .longpath import short
from .scan import InodeKey, entry_from_stat, join_hardlinks, read_xattrs, walk

__all__ = ["Snapshot", "StatRecord", "changeset_of_tree", "diff_snapshot", "take_snapshot"]

_READ = 1 << 20


@dataclass(frozen=True, slots=True)
class StatRecord:
    """What :func:`diff_snapshot` compares for one path (``mode`` includes the type)."""

    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    rdev: int
    link: str
    xattrs: tuple[tuple[str, bytes], ...]
    content: str | None = None
    nlink: int = 0  # regular files only

    def only_lost_links(self, now: StatRecord) -> bool:
        """``now`` differs from this record only by fewer links and a new ctime."""
        return (stat.S_ISREG(self.mode) and now.nlink < self.nlink
                and replace(now, nlink=self.nlink, ctime_ns=self.ctime_ns) == self)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


Snapshot = dict[str, StatRecord]


def _hash_file(path: str) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            h.update(chunk)
    return h.hexdigest()


def _record(path: str, st: os.stat_result, hash_content: bool) -> StatRecord:
    with short(path) as abspath:  # below a long storage path: longpath
        return _record_at(abspath, st, hash_content)


def _record_at(abspath: str, st: os.stat_result, hash_content: bool) -> StatRecord:
    is_link = stat.S_ISLNK(st.st_mode)
    return StatRecord(
        mode=st.st_mode, uid=st.st_uid, gid=st.st_gid,
        size=0 if stat.S_ISDIR(st.st_mode) else st.st_size,
        mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, dev=st.st_dev,
        rdev=st.st_rdev, link=os.readlink(abspath) if is_link else "",
        xattrs=read_xattrs(abspath),
        content=_hash_file(abspath) if hash_content and stat.S_ISREG(st.st_mode) else None,
        nlink=st.st_nlink if stat.S_ISREG(st.st_mode) else 0,
    )


def take_snapshot(root: Path | str, *, hash_content: bool = False) -> Snapshot:
    """Record every path under ``root`` (layer-relative path -> StatRecord)."""
    return {rel: _record(ap, st, hash_content) for rel, ap, st in walk(os.fspath(root))}


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def diff_snapshot(before: Snapshot, root: Path | str, *, hash_content: bool = False) -> Changeset:
    """The changes from ``before`` to the tree now at ``root`` (see the module docstring).

    ``hash_content`` must match the value ``before`` was taken with. Directory sizes are
    not compared (they depend on the filesystem's directory format, not on content).
    """
    top = os.fspath(root)
    after_dirs: set[str] = set()
    after_paths: set[str] = set()
    opaque: set[str] = set()  # directories that replaced something, and all dirs below them
    changed: dict[str, tuple[str, os.stat_result]] = {}
    unchanged_dirs: dict[str, tuple[str, os.stat_result]] = {}
    whiteouts: list[Whiteout] = []

    for rel, abspath, st in walk(top):
        after_paths.add(rel)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir:
            after_dirs.add(rel)
        old = before.get(rel)
        under_opaque = _parent(rel) in opaque
        if is_dir and (under_opaque or (old is not None and (
                not old.is_dir or (old.ino, old.dev) != (st.st_ino, st.st_dev)))):
            opaque.add(rel)
            if not under_opaque:
                whiteouts.append(Whiteout(rel, opaque=True))
        if old is None or under_opaque or rel in opaque or (
                old != (now := _record(abspath, st, hash_content and old.content is not None))
                and not old.only_lost_links(now)):
            changed[rel] = (abspath, st)
        elif is_dir:
            unchanged_dirs[rel] = (abspath, st)

    for rel in before:
        if rel in after_paths:
            continue
        parent = _parent(rel)
        # Only the topmost removed path: below a removed, replaced or opaque parent the
        # parent's own change already hides it.
        if parent == "" or (parent in after_dirs and parent not in opaque
                            and before.get(parent) is not None and before[parent].is_dir):
            whiteouts.append(Whiteout(rel))

    for path in list(changed) + [w.path for w in whiteouts]:
        parent = _parent(path)
        while parent and parent not in changed:
            changed[parent] = unchanged_dirs[parent]
            parent = _parent(parent)

    entries: list[Entry] = []
    files: list[tuple[Entry, InodeKey]] = []
    for rel, (abspath, st) in changed.items():
        entry = entry_from_stat(rel, abspath, st)
        if entry is None:
            continue
        if entry.kind is EntryKind.FILE and st.st_nlink > 1:
            files.append((entry, (st.st_dev, st.st_ino)))
        else:
            entries.append(entry)
    entries.extend(join_hardlinks(files))
    return Changeset.create(entries, whiteouts)


def changeset_of_tree(root: Path | str) -> Changeset:
    """Every path under ``root`` as an entry, no whiteouts: a directory as one layer."""
    return diff_snapshot({}, root)
