"""Resolving untrusted paths inside a root directory, as if the process were chrooted.

An archive entry name, a hard link target or a symlink met on the way is resolved one
component at a time against the root: ``..`` never climbs above it, and a symlink
(absolute or relative) is followed *inside* it — ``lib -> /usr/lib`` in a rootfs means
``<root>/usr/lib``, never the host's ``/usr/lib``. This is the scoping containerd's
``fs.RootPath`` and runc's securejoin apply; the result can only ever name a path under
the root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import deque

from .errors import UnsafeLayerEntry

__all__ = ["MAX_SYMLINKS", "clean_name", "resolve_in_root"]

MAX_SYMLINKS = 40  # as Linux's path walk (ELOOP)


def clean_name(name: str, *, entry: str | None = None) -> list[str]:
    """The components of an archive entry name (or of the hard link target of the
    entry ``entry``), or UnsafeLayerEntry naming the entry.

    A leading ``/`` or ``./`` is dropped (the name is relative to the rootfs, as Docker
    and containerd read it); a ``..`` component anywhere is refused, since no honest
    layer writer produces one.
    """
    what = "name" if entry is None else f"hard link target {name!r}"
    if "\0" in name:
        raise UnsafeLayerEntry(entry or name, f"NUL byte in the {what}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeLayerEntry(
            entry or name, f"'..' path component in the {what} (would climb out of the rootfs)")
    return parts


def resolve_in_root(root: str, parts: list[str], *, follow_final: bool = False,
                    name: str = "") -> str:
    """The absolute path that ``parts`` names inside ``root``, symlinks resolved scoped to
    ``root`` (the final component only with ``follow_final``). Components that do not
    exist are taken literally. Raises UnsafeLayerEntry (naming ``name``) on a symlink loop.
    """
    todo = deque(parts)
    current: list[str] = []
    links = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = os.path.join(root, *current, part)
        try:
            st = os.lstat(candidate)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            current.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (todo or follow_final):
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafeLayerEntry(name, f"more than {MAX_SYMLINKS} symlinks on its path")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            todo.extendleft(reversed(target.split("/")))
            continue
        current.append(part)
    return os.path.join(root, *current)
