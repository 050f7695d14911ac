"""``COPY --parents``: sources keep their parent directories under the destination.

As the Dockerfile reference and BuildKit (``rsync --relative`` semantics):

- ``COPY --parents x/a.txt y/a.txt /dst/`` writes ``/dst/x/a.txt`` and ``/dst/y/a.txt``;
- a ``/./`` in a source is the pivot: only the directories after it are kept
  (``COPY --parents x/./y/*.txt /dst/`` writes ``/dst/y/a.txt``);
- wildcards match within a component; ``**`` matches any number of components, none
  included (``src/**/*.txt`` matches ``src/a.txt`` and ``src/x/y/c.txt``);
- a directory that matches is copied whole; the parent directories kept get the
  source's mode (and ``--chown``'s owner, else root);
- ``--exclude`` patterns apply to paths relative to the pivot (the copy's source root);
- a source without wildcards must exist; a wildcard that matches nothing copies nothing.

The destination is always a directory.
"""

from __future__ import annotations

import os
import posixpath

from ..context import AnyStat, ContextError, DiskPath, Source, SourceTree
from ..ignore import IgnoreMatcher
from ..layers.changeset import path_sort_key

__all__ = ["ParentsSource", "resolve_parents"]

_GLOB = set("*?[")

# (path under the destination, disk path, lstat) of one thing to copy
ParentsSource = tuple[str, DiskPath, AnyStat]


def _clean(text: str) -> str:
    rel = posixpath.normpath(text.lstrip("/")) if text.strip("/") else ""
    return "" if rel == "." else rel


def resolve_parents(tree: SourceTree, src: str,
                    excludes: IgnoreMatcher) -> list[ParentsSource]:
    """What ``COPY --parents <src>`` copies, parents first; ContextError when a source
    without wildcards does not exist."""
    pivot, sep, pattern = src.partition("/./")
    if not sep:
        pivot, pattern = "", src
    pivot, pattern = _clean(pivot), _clean(pattern)
    parts = pattern.split("/") if pattern else []
    literal: list[str] = []
    for part in parts:
        if set(part) & _GLOB:
            break
        literal.append(part)
    wild = len(literal) < len(parts)

    def under_pivot(rel: str) -> str:
        return posixpath.join(pivot, rel) if pivot and rel else (pivot or rel)

    found: dict[str, tuple[DiskPath, AnyStat]] = {}
    if not wild:
        top = tree.resolve(under_pivot(pattern) or ".")[0]
        _add(found, pattern, top, excludes, tree)
    else:
        start = "/".join(literal)
        try:
            base = tree.resolve(under_pivot(start) or ".")[0]
        except ContextError:
            return []
        if not base.is_dir:
            return []
        matcher = IgnoreMatcher.from_lines([pattern])
        for rel, path, st in tree.walk(base):
            full = posixpath.join(start, rel) if start else rel
            if matcher.excluded(full) and not excludes.excluded(full):
                found[full] = (path, st)
    # the parents kept: every directory between the pivot and what was found
    for rel in list(found):
        parent = posixpath.dirname(rel)
        while parent and parent not in found:
            source = tree.resolve(under_pivot(parent))[0]
            found[parent] = (source.path, os.stat(source.path))
            parent = posixpath.dirname(parent)
    return [(rel, *found[rel]) for rel in sorted(found, key=path_sort_key)]


def _add(found: dict[str, tuple[DiskPath, AnyStat]], rel: str, top: Source,
         excludes: IgnoreMatcher, tree: SourceTree) -> None:
    if excludes.excluded(rel):
        return
    found[rel] = (top.path, os.stat(top.path))
    if top.is_dir:
        for sub, path, st in tree.walk(top):
            full = posixpath.join(rel, sub) if rel else sub
            if not excludes.excluded(full):
                found[full] = (path, st)
