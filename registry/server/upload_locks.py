"""Exclusive access to one upload session: the :class:`UploadLocks` seam.

A session's requests (PATCH, PUT, GET status, DELETE) must not interleave: a chunk
appended while another is appended, or a commit during an append, would corrupt the
ingest. :class:`InProcessUploadLocks` serialises them within one process, which is enough
while each session is served by one process (the server today, or replicas behind a
balancer that routes by upload id -- the ``Location`` URL carries it).

Replicas that share a session need a cross-process implementation of the same protocol:
:class:`~registry.server.upload_locks_pg.PgUploadLocks` (an advisory lock in the shared
PostgreSQL database, held for the request), which ``make_app`` plugs in as
``Registry.upload_locks`` whenever the metadata is in PostgreSQL, and
:class:`~registry.server.upload_locks_file.FileUploadLocks` (a lock of a file in the
storage directory) for the processes that share one storage directory otherwise. The suite in
``tests/registry/test_upload_locks.py`` is the contract both pass. Such replicas must
also not trust a session's ingest kept open between requests (``Registry.ingests``): the
previous request may have landed elsewhere (``uploads._session`` checks the checkpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

__all__ = ["InProcessUploadLocks", "UploadLocks"]


class UploadLocks(Protocol):
    """Mutual exclusion per upload session id."""

    def hold(self, upload_id: str) -> AbstractAsyncContextManager[None]:
        """Hold ``upload_id``'s lock for the ``async with`` block.

        - At most one holder per id at a time, among everyone sharing the implementation
          (this process for the in-process one; every replica for a shared one); holders
          of different ids never wait for each other.
        - Waiters acquire in arrival order where the backend can (fairness is a goal, not
          a promise); waiting never blocks the event loop.
        - The lock is released when the block exits, by return, exception or
          cancellation; a waiter cancelled before acquiring never holds it."""
        ...

    def forget(self, upload_id: str) -> None:
        """The session is over. Holders and waiters finish normally, and the id stays
        exclusive while any remain; the implementation may release what it keeps for it."""
        ...


class InProcessUploadLocks:
    """:class:`UploadLocks` for one process: an ``asyncio.Lock`` per id, kept only while
    someone holds or waits for it (so ids of ended sessions leave nothing behind)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        """Ids currently held or waited for."""
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(upload_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[upload_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[upload_id]
            if users == 1:
                del self._locks[upload_id]
            else:
                self._locks[upload_id] = (lock, users - 1)

    def forget(self, upload_id: str) -> None:
        """Nothing to do: an id's lock goes once its last user leaves."""
