"""Upload-session locks shared by every replica of one PostgreSQL database
(:class:`PgUploadLocks`, the cross-process :class:`~registry.server.upload_locks.UploadLocks`).

A hostile (or confused) client may send two requests of one session at the same moment
to two replicas. Each request holds the session's lock for its whole duration, so they
run one after the other everywhere: the second one sees the state the first one left
(its ``Content-Range`` no longer starts at the session's offset: 416 with the ``Range``
to resume from, as the distribution spec asks for a chunk out of order; a session the
first one finished or cancelled: ``BLOB_UPLOAD_UNKNOWN``).

How. A session's requests on one replica first queue on an in-process lock (no database
connection while they wait: only one request per session and replica ever holds or waits
for a database lock). The one at the head takes a connection from a small pool of its
own, opens a transaction and takes a transaction-level advisory lock keyed by the upload
id (``pg_try_advisory_xact_lock(class, key)``; the two-key form, whose key space the
metadata's one-key writer locks do not share), polling with a short backoff while
another replica holds it: no statement ever waits inside the database, so cancelling a
waiting request is immediate and leaves nothing behind. The lock goes when the
transaction ends (commit on exit, rollback on error or cancellation) or, if the replica
dies, when PostgreSQL sees its connection close: a killed replica never leaves a session
locked. The transaction takes no snapshot and writes nothing, so holding it through a long
upload body does not hold back vacuum.

Two ids whose keys collide (32-bit) merely serialise with each other. SQLite deployments
(one process per store) keep :class:`~registry.server.upload_locks.InProcessUploadLocks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

from cas.pg_db import Liveness, live_connection, mapped_errors, open_async_pool, redact

from .upload_locks import InProcessUploadLocks

__all__ = ["PgUploadLocks"]


def _int4(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


_CLASS = _int4(zlib.crc32(b"pybuild:upload-session"))
# Polling while another replica holds a session: first retry soon, then back off.
_FIRST_WAIT, _MAX_WAIT = 0.002, 0.05


async def _granted(cur: Any) -> bool:
    row = await cur.fetchone()
    return row is not None and bool(row[0])


@contextlib.asynccontextmanager
async def _mapped(liveness: Liveness) -> AsyncIterator[None]:
    with mapped_errors(liveness.url, liveness):  # a lost database is DatabaseUnavailable, naming it
        await liveness.check_async()  # seen down: fail at once, not after the pool's timeout
        yield


class PgUploadLocks:
    """:class:`~registry.server.upload_locks.UploadLocks` shared through the PostgreSQL
    database at ``url`` (see the module docstring); open with :meth:`open`, :meth:`close`
    when done. ``max_size``: connections held at most, one per request holding or waiting
    for a session's lock (further requests wait for one). A request that streams a large
    body takes its upload slot (``limits.UploadSlots``) *before* the session's lock, so
    those hold at most ``uploads_max_active`` connections and requests queued for a slot
    hold none; ``make_app`` leaves 16 more for the short ones."""

    def __init__(self, url: str, pool: Any) -> None:
        self.url = url
        self._pool = pool
        self._local = InProcessUploadLocks()
        self._liveness = Liveness(url)

    @classmethod
    async def open(cls, url: str, *, max_size: int = 16) -> PgUploadLocks:
        pool = await open_async_pool(url, max_size=max_size, wait=300)
        return cls(url, pool)

    async def close(self) -> None:
        await self._pool.close()

    @property
    def connections_in_use(self) -> int:
        """Connections held now by requests holding or waiting for a session's lock."""
        stats = self._pool.get_stats()
        return int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0))

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[None]:
        key = _int4(zlib.crc32(upload_id.encode()))
        # Two integers in the text, no parameters: BEGIN and the first try are one round
        # trip (the simple query protocol takes several statements), COMMIT the other.
        take = f"SELECT pg_try_advisory_xact_lock({_CLASS}, {key})"
        async with self._local.hold(upload_id), _mapped(self._liveness), \
                live_connection(self._pool, self._liveness) as conn:
            try:
                cur = await conn.execute(f"BEGIN; {take}")
                cur.nextset()  # past BEGIN's result to the try's
                wait = _FIRST_WAIT
                while not await _granted(cur):
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, _MAX_WAIT)
                    cur = await conn.execute(take)
                yield
            except BaseException:
                # Also on cancellation: the pool would roll back a connection returned
                # inside a transaction, this says so at once.
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            await conn.execute("COMMIT")

    def forget(self, upload_id: str) -> None:
        """Nothing kept per id: the database lock ends with its transaction."""

    def __repr__(self) -> str:
        return f"PgUploadLocks({redact(self.url)!r})"
