"""A store on a read-only file system (a backup snapshot, a CI cache volume mounted ``ro``),
opened by a command that only reads it.

A command that only reads (``pybuild images``, ``inspect``, ``history``, ``storage stats``,
``storage fsck``, a push or a copy out of the store) opens its store with
:meth:`~cas.location.StoreConfig.for_reading`. On a writable file system that changes
nothing: the store opens as every other command opens it. Only where the file system is
read-only (:func:`on_read_only_fs`, or a write refused with ``EROFS`` at open) does the
store open read-only: its SQLite files through :func:`read_only_uri`, no reserve kept back,
no directory made; every write then raises ``StorageNotWritable`` naming the path, the
read-only file system and the fix. Commands that must write (``pull``, ``build``, ``rmi``,
``storage gc``, ``retention``, ``serve``) never ask for this and fail at open, as before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["READ_ONLY_CAUSE", "on_read_only_fs", "read_only_uri"]

#: The cause a StorageNotWritable names for a read-only file system (``EROFS``'s words).
READ_ONLY_CAUSE = os.strerror(errno.EROFS).lower()


def on_read_only_fs(path: Path) -> bool:
    """Whether the file system that holds ``path`` (or its nearest existing parent) is
    mounted read-only (``statvfs`` ``ST_RDONLY``); False when that cannot be told."""
    for here in (path, *path.parents):
        try:
            return bool(os.statvfs(here).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return False


def read_only_uri(path: Path) -> str:
    """The URI that opens the SQLite file ``path``, on a read-only file system, for reading.

    A reader of a database in WAL mode needs the ``-shm`` index of its write-ahead log,
    which it cannot make on a read-only file system (SQLite, "WAL mode", section 8). When
    a ``-wal`` and its ``-shm`` are there (a snapshot of a store in use, or a read-only view
    of a directory another process writes through another mount), they are read as they
    are (``mode=ro``): the commits in the log are seen. When there is no log with anything
    in it, the last process to close the database checkpointed it: the file holds every
    commit and is read as it is, without locks (``immutable=1``). A log with commits and
    no index (rare: the index was removed) cannot be read here; opening it fails, and the
    error says to mount the storage read-write once."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    wal = path.with_name(path.name + "-wal")
    shm = path.with_name(path.name + "-shm")
    try:
        logged = wal.stat().st_size > 0 or shm.exists()
    except FileNotFoundError:
        logged = False
    return uri if logged else f"{uri}&immutable=1"
