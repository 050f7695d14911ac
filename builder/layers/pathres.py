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
from pathlib import Path

from .errors import UnsafeLayerEntry
from .longpath import short
from .rootwalk import MAX_SYMLINKS, SymlinkLoop, walk_in_root

__all__ = ["MAX_SYMLINKS", "clean_name", "resolve_in_root", "resolve_under"]


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
    ``root`` (the final component only with ``follow_final``; :mod:`.rootwalk`).
    Components that do not exist are taken literally. Raises UnsafeLayerEntry (naming
    ``name``) on a symlink loop.
    """

    def lstat(components: list[str]) -> os.stat_result | None:
        try:
            with short(os.path.join(root, *components)) as path:  # a long root: longpath
                return os.lstat(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            return None

    def readlink(components: list[str]) -> str:
        with short(os.path.join(root, *components)) as path:
            return os.readlink(path)

    try:
        resolved = walk_in_root(parts, lstat=lstat, follow_final=follow_final,
                                readlink=readlink)
    except SymlinkLoop as exc:
        raise UnsafeLayerEntry(name, str(exc)) from None
    return os.path.join(root, *resolved)


def resolve_under(root: str | os.PathLike[str], path: str) -> Path:
    """``path`` (absolute or not) inside ``root``, every link on it resolved there, the
    last one too: a mount source as BuildKit finds it in a stage or the context."""
    return Path(resolve_in_root(os.fspath(root), [p for p in path.split("/") if p],
                                follow_final=True))
