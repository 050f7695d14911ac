"""Temporary files and directories written beside a destination and renamed onto it
(``.NAME.XXXXXXXX.tmp``, as ``tempfile`` names them): held with a shared ``flock`` while
their writer uses them, so that one a killed writer left behind (SIGKILL, a CI job's
timeout: as large as the image it was writing) is removed by the next writer to the same
destination, and never one a writer still running uses."""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from cas.unheld import remove_unheld

__all__ = ["held_temporary", "remove_abandoned"]


def held_temporary(dest: Path, *, directory: bool) -> tuple[int, str]:
    """A new temporary file (opened for writing) or directory beside ``dest``, held: its
    descriptor (close it when done: that releases it) and its path. Those that killed
    writers left are removed first."""
    import tempfile  # here: a pull into the store writes no file beside a destination

    remove_abandoned(dest)
    while True:
        prefix = f".{dest.name}."
        if directory:
            path = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=dest.parent)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                # another writer starting beside it took it for abandoned (not held yet)
                continue
        else:
            fd, path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=dest.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits out another writer taking it for abandoned
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, path
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # taken between its making and the lock: make another


def remove_abandoned(dest: Path) -> None:
    """The temporary files and directories beside ``dest`` that no writer holds (an
    exclusive ``flock`` is granted): those of writers that were killed."""
    pattern = re.compile(re.escape(f".{dest.name}.") + r"[a-z0-9_]{8}\.tmp")
    try:
        with os.scandir(dest.parent) as entries:
            found = [e.path for e in entries if pattern.fullmatch(e.name)]
    except OSError:  # no such directory: the writer says so
        return
    remove_unheld(found)
