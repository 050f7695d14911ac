"""Removing what a killed process left: temporary files and directories that their
writers hold with an ``flock`` while they use them, so that an exclusive lock granted
means the writer is gone (SIGKILL, a CI job's timeout)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable

__all__ = ["remove_unheld"]


def remove_unheld(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Remove each of ``paths`` (file or directory tree) that no process holds a lock on;
    those in use, or gone meanwhile, are left."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not os.path.samestat(os.fstat(fd), os.lstat(path)):
                continue  # replaced since it was opened: not the one locked
            if os.path.isdir(path):
                import shutil  # seldom: most commands find nothing left to remove

                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:  # in use by a writer still running (BlockingIOError), or gone
            pass
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
