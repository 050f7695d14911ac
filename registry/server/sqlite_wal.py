"""Has anything committed to a SQLite database in WAL mode? Answered from the WAL-index.

``PRAGMA data_version`` answers it too, but it opens and ends a read transaction: two
``fcntl`` lock calls, 5-9 us, which was the costliest step of serving a cached manifest.
Every connection to a WAL database maps the WAL-index, the ``-shm`` file beside it
(https://www.sqlite.org/walformat.html, "The WAL-Index Format"). It begins with a 48-byte
header that every commit rewrites -- ``iChange`` ("incremented with each transaction"),
``mxFrame`` and the checksums; a restarted WAL gets new salts -- and whose layout SQLite
keeps fixed, since processes running different SQLite versions share it. Comparing those
bytes with the last ones read costs a fraction of a microsecond.

- A commit rewrites the header's second copy, then its first (the one read here), before
  ``COMMIT`` returns: once a commit has returned anywhere, a reader sees new bytes, and a
  connection that begins reading after that sees the commit.
- A read torn by a writer at work gives bytes never seen before: "changed", which only
  costs the caller a revalidation.
- SQLite's locks are POSIX ``fcntl`` locks, which a process loses on a file when it closes
  *any* descriptor of that file. So a ``-shm`` file is opened once per process and closed
  only when the last :class:`WalIndex` on it is released -- after the SQLite connections of
  its owner are closed (the connections of :class:`~registry.server.metadata_sqlite.
  SqliteMetadata` are the only ones a registry process opens on ``registry.db``).
- It is mapped only after a connection of this process has read the database: that
  connection holds SQLite's "dead man switch" lock on the file, so no other process
  re-initialises it while it is mapped here.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from pathlib import Path

__all__ = ["WalIndex"]

_HEADER = 48
_VERSION = 3007000  # WalIndexHdr.iVersion (native byte order, as SQLite writes it)
_lock = threading.Lock()


class _Shm:
    """One ``-shm`` file opened in this process: its mapping (which holds a descriptor of
    its own), whether it can be read, the descriptors to close with it, and how many
    :class:`WalIndex` use it."""

    def __init__(self, mapped: mmap.mmap | None, usable: bool, fd: int) -> None:
        self.mapped = mapped
        self.usable = usable
        self.fds = [fd]
        self.users = 0


_files: dict[tuple[int, int], _Shm] = {}  # by (st_dev, st_ino)


class WalIndex:
    """The WAL-index header of one database, read without a system call. Every
    :meth:`open` is paired with one :meth:`release`."""

    def __init__(self, key: tuple[int, int] | None, mapped: mmap.mmap | None) -> None:
        self._key = key
        self._map = mapped

    @property
    def usable(self) -> bool:
        """False when the database is not in WAL mode with an initialised WAL-index (or the
        index was released): ask SQLite instead."""
        return self._map is not None

    @classmethod
    def open(cls, database: Path) -> WalIndex:
        """Map ``database``'s ``-shm`` header. Call it after a connection of this process
        has read the database, and :meth:`release` after that connection is closed
        (module docstring)."""
        shm = f"{database}-shm"
        with _lock:
            try:
                fd = os.open(shm, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:  # no WAL-index: not in WAL mode
                return cls(None, None)
            # From here on this descriptor is closed only with the file's last user.
            try:
                st = os.fstat(fd)
                key = (st.st_dev, st.st_ino)
                shared = _files.get(key)
                if shared is not None:
                    shared.fds.append(fd)
                else:
                    mapped = None
                    if st.st_size >= mmap.PAGESIZE:
                        mapped = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ)
                    usable = mapped is not None and _initialised(mapped[:_HEADER])
                    shared = _files[key] = _Shm(mapped, usable, fd)
            except OSError:
                key = (-1, fd)  # unusable; closed at release all the same
                shared = _files[key] = _Shm(None, False, fd)
            shared.users += 1
            return cls(key, shared.mapped if shared.usable else None)

    def header(self) -> bytes:
        """The header's first copy: new bytes whenever a commit happened since."""
        mapped = self._map
        if mapped is None:
            raise ValueError("the WAL-index is not mapped")
        return mapped[:_HEADER]

    def release(self) -> None:
        """Stop reading; the file's last user closes it. Call after closing the owner's
        SQLite connections (module docstring)."""
        with _lock:
            key, self._key, self._map = self._key, None, None
            shared = _files.get(key) if key is not None else None
            if key is None or shared is None:
                return
            shared.users -= 1
            if shared.users <= 0:
                del _files[key]
                if shared.mapped is not None:
                    shared.mapped.close()
                for fd in shared.fds:
                    os.close(fd)


def _initialised(header: bytes) -> bool:
    version, _, _, is_init = struct.unpack_from("=IIIB", header)
    return bool(version == _VERSION and is_init == 1)
