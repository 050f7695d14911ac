"""The filesystem changes of one build step, as the OCI image spec's layer.md sees them.

A :class:`Changeset` holds the paths a step added or modified (:class:`Entry`, with the
metadata a tar header carries) and the paths it removed (:class:`Whiteout`). Content is
not held in memory: a regular file's :attr:`Entry.source` names the file on disk that the
tar writer streams from.

Paths are layer-relative, ``/``-separated, with no leading ``/`` and no trailing ``/``
(``usr/bin/sh``); names that are not valid UTF-8 are carried as ``os.fsdecode`` gives
them (surrogate escapes) and written back as the original bytes.

Order (:meth:`Changeset.tar_order`): a parent directory before its children; within a
directory the opaque whiteout ``.wh..wh..opq`` first, then every other name (entries and
``.wh.<name>`` whiteouts alike) sorted by its bytes. This is the order of the tar stream,
so the same changes always give the same bytes.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "OPAQUE_WHITEOUT",
    "WHITEOUT_PREFIX",
    "Changeset",
    "Entry",
    "EntryKind",
    "Whiteout",
    "path_sort_key",
    "whiteout_mark",
]

# layer.md, "Whiteouts" and "Opaque Whiteout"
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"


def whiteout_mark(parts: list[str]) -> tuple[list[str], bool] | None:
    """What the whiteout entry ``parts`` hides: ``(path parts, True)`` for an opaque
    directory, ``(path parts, False)`` for a removed path, None for aufs metadata."""
    if parts[-1] == OPAQUE_WHITEOUT:
        return parts[:-1], True
    if parts[-1].startswith(WHITEOUT_PREFIX * 2):
        return None
    return [*parts[:-1], parts[-1][len(WHITEOUT_PREFIX):]], False


class EntryKind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Entry:
    """One added or modified path.

    ``mode`` holds the permission bits including setuid, setgid and sticky (``0o7777``);
    the kind is :attr:`kind`. ``source`` (FILE only) is the absolute path of the content.
    ``link`` is a symlink's target, or for a HARDLINK the layer path of the entry it
    links to (which comes earlier in :meth:`Changeset.tar_order`). ``xattrs`` are sorted
    by name and never include overlayfs's own or ``security.selinux``.
    """

    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    source: str | None = None
    link: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Whiteout:
    """A removed path (``.wh.<name>``), or with ``opaque`` a directory whose lower
    contents are all hidden (``<path>/.wh..wh..opq``; the directory itself is an Entry)."""

    path: str
    opaque: bool = False

    @property
    def tar_name(self) -> str:
        """The name of the whiteout file in the layer tar."""
        if self.opaque:
            return f"{self.path}/{OPAQUE_WHITEOUT}" if self.path else OPAQUE_WHITEOUT
        parent, _, base = self.path.rpartition("/")
        name = WHITEOUT_PREFIX + base
        return f"{parent}/{name}" if parent else name


def path_sort_key(name: str) -> tuple[tuple[int, bytes], ...]:
    """Sort key of a tar name: parents before children, opaque marker first, then bytes."""
    return tuple(
        (0, b"") if part == OPAQUE_WHITEOUT else (1, os.fsencode(part))
        for part in name.split("/")
    )


@dataclass(frozen=True, slots=True)
class Changeset:
    """The changes of one step. Build it with :meth:`create`, which sorts and checks."""

    entries: tuple[Entry, ...]
    whiteouts: tuple[Whiteout, ...] = ()

    @classmethod
    def create(cls, entries: list[Entry] | tuple[Entry, ...],
               whiteouts: list[Whiteout] | tuple[Whiteout, ...] = ()) -> Changeset:
        """Sort entries and whiteouts into tar order; raise ValueError on a duplicate path
        or a hard link to a path that is not an earlier FILE entry."""
        ents = sorted(entries, key=lambda e: path_sort_key(e.path))
        outs = sorted(whiteouts, key=lambda w: path_sort_key(w.tar_name))
        seen: dict[str, EntryKind] = {}
        for e in ents:
            if e.path in seen:
                raise ValueError(f"changeset lists {e.path!r} twice")
            if e.kind is EntryKind.HARDLINK and seen.get(e.link) is not EntryKind.FILE:
                raise ValueError(
                    f"hard link {e.path!r} -> {e.link!r}: the target must be a regular "
                    "file earlier in the same changeset"
                )
            seen[e.path] = e.kind
        return cls(tuple(ents), tuple(outs))

    def tar_order(self) -> Iterator[Entry | Whiteout]:
        """Entries and whiteouts merged in tar order (see the module docstring)."""
        ents, outs = self.entries, self.whiteouts
        i = j = 0
        while i < len(ents) or j < len(outs):
            if j >= len(outs) or (
                i < len(ents) and path_sort_key(ents[i].path) < path_sort_key(outs[j].tar_name)
            ):
                yield ents[i]
                i += 1
            else:
                yield outs[j]
                j += 1

    def paths(self) -> set[str]:
        """Every path the changeset adds, modifies or removes (opaque dirs as themselves)."""
        return {e.path for e in self.entries} | {w.path for w in self.whiteouts}
