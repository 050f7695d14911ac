"""Import a directory as a single layer: how a base image is made from a rootfs.

Every path under the directory becomes an entry (the directory itself is not one);
hard links inside it stay hard links, symlinks are stored as they are (relative
``bin/ls -> busybox`` and absolute ones alike), and no whiteouts are written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import BinaryIO

from .changeset import Changeset
from .chunked import DEFAULT_AVG_CHUNK, LayerBlob, write_layer
from .snapshot import changeset_of_tree

__all__ = ["import_directory"]


def import_directory(root: Path | str, out: BinaryIO, *, source_date_epoch: int | None = None,
                     owner: tuple[int, int] | None = None, compression: str = "gzip",
                     level: int | None = None, avg_size: int = DEFAULT_AVG_CHUNK,
                     workers: int | None = None) -> LayerBlob:
    """Write the tree at ``root`` as one chunked-frame layer to ``out``.

    ``owner=(uid, gid)`` records every entry with that owner instead of the one on disk
    (for a rootfs unpacked by an unprivileged user that should belong to root).
    """
    changeset = changeset_of_tree(root)
    if owner is not None:
        uid, gid = owner
        changeset = Changeset(
            tuple(dataclasses.replace(e, uid=uid, gid=gid) for e in changeset.entries),
            changeset.whiteouts,
        )
    return write_layer(changeset, out, source_date_epoch=source_date_epoch,
                       compression=compression, level=level, avg_size=avg_size,
                       workers=workers)
