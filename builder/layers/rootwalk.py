"""The one path walk inside a root filesystem, symlinks scoped to that root.

A path is resolved one component at a time: ``""`` and ``.`` are skipped, ``..`` never
climbs above the root, and a symlink met on the way (the final component only when asked)
is followed *inside* the root — an absolute target restarts at the root, as the kernel
does for a chrooted process (containerd's ``fs.RootPath``, runc's securejoin). At most
:data:`MAX_SYMLINKS` symlinks are followed, as Linux's path walk (ELOOP).

Where the files are is the caller's: ``lstat`` and ``readlink`` take the components
below the root (a directory on disk, a stack of extracted layers), and ``missing`` is
told of each component that does not exist (to refuse or to create it) before the walk
takes it literally. Users: :func:`builder.layers.pathres.resolve_in_root` (layer
extraction), ``builder.steps.copy.resolve_in_lowers`` (COPY destinations in a stage's
layers) and ``builder.sandbox._stage.resolve`` (mount points in the step's root).

Standard library only, importing nothing from pybuild: ``_stage.py`` runs as an isolated
script (``python3 -I``) and loads this file by its path.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable

__all__ = ["MAX_SYMLINKS", "SymlinkLoop", "walk_in_root"]

MAX_SYMLINKS = 40


class SymlinkLoop(Exception):
    """More than :data:`MAX_SYMLINKS` symlinks on the way; ``resolved`` holds the
    components resolved when the walk gave up."""

    def __init__(self, resolved: list[str]) -> None:
        super().__init__(f"more than {MAX_SYMLINKS} symlinks on its path")
        self.resolved = resolved


def walk_in_root(parts: Iterable[str], *,
                 lstat: Callable[[list[str]], os.stat_result | None],
                 readlink: Callable[[list[str]], str],
                 follow_final: bool,
                 missing: Callable[[list[str], bool], None] | None = None) -> list[str]:
    """The components below the root that ``parts`` names, every symlink on the way
    resolved inside the root (the final one only with ``follow_final``).

    ``lstat(components)`` is None for a path that does not exist; ``missing(components,
    last)`` is then called (``last``: it is the final component) and may raise; the
    component is taken literally. Raises :class:`SymlinkLoop`.
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
        candidate = [*current, part]
        st = lstat(candidate)
        if st is None:
            if missing is not None:
                missing(candidate, not todo)
            current.append(part)
            continue
        if stat.S_ISLNK(st.st_mode) and (todo or follow_final):
            links += 1
            if links > MAX_SYMLINKS:
                raise SymlinkLoop(current)
            target = readlink(candidate)
            if target.startswith("/"):
                current = []
            todo.extendleft(reversed(target.split("/")))
            continue
        current.append(part)
    return current
