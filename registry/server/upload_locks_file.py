"""Upload-session locks shared by the processes that serve one storage directory.

Several ``pybuild serve`` processes may serve one storage directory with its SQLite
metadata (``tests/registry/test_multiprocess.py``). A session's requests sent to two of
them at once (a client that sends its PATCHes in parallel, or a balancer that spreads
them) would both append to the one ingest: both answered 202, then a commit that finds
the ingest inconsistent. :class:`FileUploadLocks` makes a session exclusive among them:
an open-file-description lock (``F_OFD_SETLK``, Linux) of one byte of
``<storage>/upload-locks``, at the offset the upload id hashes to (63 bits: two ids
never share one in practice). It is tried without blocking and tried again after a
short sleep while another holder has it, so the event loop never waits on it; a
process that dies releases its locks with its descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

from .upload_locks import InProcessUploadLocks

__all__ = ["FileUploadLocks"]

LOCK_FILE = "upload-locks"
_RETRY_FIRST, _RETRY_MAX = 0.005, 0.1  # seconds between tries while another process holds it


class FileUploadLocks:
    """:class:`~registry.server.upload_locks.UploadLocks` across the processes whose
    handles open the same ``path``; each handle also queues its own holders in process."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._local = InProcessUploadLocks()

    @classmethod
    def at(cls, storage: Path) -> FileUploadLocks:
        return cls(storage / LOCK_FILE)

    def _lock(self, kind: int, upload_id: str) -> None:
        offset = int.from_bytes(hashlib.sha256(upload_id.encode()).digest()[:8], "big") >> 1
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", kind, os.SEEK_SET, offset, 1, 0))

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[None]:
        async with self._local.hold(upload_id):
            delay = _RETRY_FIRST
            while True:
                try:
                    self._lock(fcntl.F_WRLCK, upload_id)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
            try:
                yield
            finally:
                self._lock(fcntl.F_UNLCK, upload_id)

    def forget(self, upload_id: str) -> None:
        self._local.forget(upload_id)

    def close(self) -> None:
        os.close(self._fd)
