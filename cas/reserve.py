"""Room kept back in the storage directory, so that a full disk can be emptied with pybuild.

SQLite cannot even open a database in WAL mode on a file system with no free block (its
shared-memory index must grow first), nor delete a row (the WAL grows): on a full disk
``pybuild images``, ``rmi`` and ``storage gc`` -- the commands that would free the space
-- failed like every other. So a store on a file system with room to spare keeps
:data:`RESERVE` bytes back in ``<storage>/reserve`` (:func:`keep_reserve`, when it opens),
and a command that finds the disk full gives them back before it opens a database
(:func:`release_reserve`): ``images``, ``rmi`` and ``gc`` then work, and the next open
with room to spare keeps them back again. A process killed while it writes the reserve
leaves its temporary file (``.reserve.XXXXXXXX``, held with a ``flock`` while written):
the next open removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .unheld import remove_unheld

__all__ = ["RESERVE", "RESERVE_FILE", "keep_reserve", "release_reserve"]

RESERVE = 2 << 20
# Kept back only on a file system with this much free: never the last of a small one.
_ROOM = 64 << 20
RESERVE_FILE = "reserve"  # in the storage directory
_NAME = RESERVE_FILE


def _free(root: Path) -> int | None:
    try:
        fs = os.statvfs(root)
    except OSError:
        return None
    return fs.f_bavail * fs.f_frsize


def release_reserve(root: Path) -> bool:
    """Give the reserve back when the file system at ``root`` has less than it free;
    True when it did."""
    path = root / _NAME
    free = _free(root)
    if free is None or free >= RESERVE or not path.exists():
        return False
    with contextlib.suppress(OSError):
        path.unlink()
        return True
    return False


def keep_reserve(root: Path) -> None:
    """Keep the reserve back, if it is missing and the file system has room to spare.
    Best effort: a failure leaves no partial file."""
    path = root / _NAME
    _remove_abandoned(root)
    free = _free(root)
    if free is None or free < _ROOM or path.exists():
        return
    import tempfile  # here: kept back once, and every command opens a store

    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{_NAME}.", dir=root)  # one each, if two open
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            fcntl.flock(fd, fcntl.LOCK_EX)  # being written: not another's to remove
            # Written, and not zeros: a sparse or compressed file would keep nothing back.
            f.write(os.urandom(RESERVE))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _remove_abandoned(root: Path) -> None:
    """The temporary reserves of processes killed while writing one: those no process
    holds (an exclusive ``flock`` is granted)."""
    with contextlib.suppress(OSError):
        remove_unheld(list(root.glob(f".{_NAME}.*")))
