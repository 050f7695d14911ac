"""Entry names of an archive ``ADD`` unpacks, read as Docker's untar reads them.

Docker's untar (BuildKit's, and the classic builder's) runs chrooted at the destination,
so the destination is ``/`` to it: it cleans a name lexically (Go's ``filepath.Clean``)
and joins it to ``/``, where ``..`` cannot climb higher. So ``../escape``, ``a/../../b``
and ``x/../../../deep`` land at ``<dest>/escape``, ``<dest>/b`` and ``<dest>/deep``, and
``/abs/name`` at ``<dest>/abs/name`` (checked against Docker 20.10's BuildKit):

- a name that cleans to ``.`` (``./``, ``a/..``, an empty name) is skipped;
- one that cleans to the destination itself any other way (``../``, ``/``): a directory
  entry gives the destination its metadata (mode, owner, mtime); any other entry fails,
  as Docker's does ("unlinkat .//: device or resource busy": it cannot replace the root).

Whiteout names: Docker's untar writes ``.wh.<name>`` and ``.wh..wh..opq`` as ordinary
files (whiteouts are only read from image layers), so on the engine that built the image
``docker run`` shows them, and the stage's ``<name>`` too. But BuildKit's layer then holds
entries of those names, which every consumer of the pushed, saved or loaded image reads as
whiteouts: BuildKit's result is not the same image everywhere. No layer can carry a file
of such a name (:mod:`.tarwriter` refuses one), so pybuild unpacks the rest and leaves out
every entry with a ``.wh.`` component: the image shows what ``docker run`` of BuildKit's
shows, less those names. Nothing is deleted, neither the stage's files nor what the same
``ADD`` wrote before (where such a name would otherwise act as a whiteout).

A layer's names are stricter (:func:`.pathres.clean_name` refuses ``..``). Either way the
parent is then resolved inside the root: nothing outside it is ever written. Docker's
untar writes onto the stage's files, so the symlinks and directories the stage has at the
destination are on an archive entry's way too: ``link/passwd`` with the stage's
``/dst/link -> /etc`` lands at ``/dst/etc/passwd`` (the destination is ``/`` to it), not
the image's ``/etc/passwd``, and the stage's symlink stays. :func:`untar_parent` follows
them over the layer's ``lower`` lookup (:func:`.linkup.walk_merged`), copying up the
stage's directories on the way as overlayfs would.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable

from .changeset import WHITEOUT_PREFIX
from .errors import LayerFormatError, UnsafeLayerEntry
from .linkup import LowerLookup, walk_merged
from .longpath import short

__all__ = ["untar_name", "untar_parent"]


def untar_name(name: str, *, is_dir: bool) -> list[str] | None:
    """The components, below the destination, of the ADD archive entry ``name``
    (``is_dir``: a directory entry); None for an entry to skip (a name that cleans to
    ``.``, or with a component that starts with ``.wh.``); an empty list for a
    directory entry naming the destination itself.

    Raises UnsafeLayerEntry for a NUL byte, LayerFormatError for an entry other than a
    directory that names the destination itself."""
    if "\0" in name:
        raise UnsafeLayerEntry(name, "NUL byte in the name")
    if is_dir and not name:
        # Python's tarfile drops a directory name's trailing "/": "/" reads as "" (an
        # empty name, which no tar writer produces, would be skipped by Docker).
        name = "/"
    if posixpath.normpath(name or ".") == ".":  # Go's Clean: "" and "a/.." are "."
        return None
    parts = [p for p in posixpath.normpath("/" + name).split("/") if p]
    if any(p.startswith(WHITEOUT_PREFIX) for p in parts):
        return None  # see the module's docstring: no layer can carry it as a file
    if not parts and not is_dir:
        raise LayerFormatError(
            f"archive entry {name!r} names the destination itself (its '..' stop there, "
            "as Docker's untar reads them) but is not a directory, and nothing can replace "
            "the destination (Docker fails too: 'device or resource busy'); rename the "
            "entry in the archive")
    return parts


def untar_parent(root: str, comps: list[str], *, name: str, lower: LowerLookup,
                 hidden: Callable[[list[str]], bool]
                 ) -> tuple[str, list[tuple[str, os.stat_result]]]:
    """The directory ``comps`` names in the layer ``root`` over the stage's files
    (``lower``; ``hidden``: what the layer's whiteouts hide of them), every symlink on the
    way followed inside ``root``, and the directories made in ``root`` for those only the
    stage has on its way, each with the lstat of the stage's (for
    :func:`.linkup.restore_dir` once the layer is applied). Components past what either
    holds are left for the caller to make. Raises UnsafeLayerEntry for a symlink loop."""
    resolved = walk_merged(root, comps, name=name, lower=lower, hidden=hidden)
    made: list[tuple[str, os.stat_result]] = []
    path = root
    for i, part in enumerate(resolved):
        path = os.path.join(path, part)
        try:
            with short(path) as at:
                if not stat.S_ISDIR(os.lstat(at).st_mode):
                    break  # the layer's own file: making the entry's parent says so
            continue
        except FileNotFoundError:
            pass
        found = None if hidden(resolved[:i + 1]) else lower("/".join(resolved[:i + 1]))
        if found is None or not stat.S_ISDIR(found[1].st_mode):
            break
        with short(path) as at:
            os.mkdir(at, 0o700)
        made.append((path, found[1]))
    return os.path.join(root, *resolved), made
