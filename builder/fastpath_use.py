"""The build cache's side of the fast path (:mod:`builder.fastpath`): the use of the steps
a hit answers for.

A hit answers a build whose steps would all be found in the build cache; such a build
records their use in ``cache.db`` (``steps.used``) once the last recorded use is
:data:`~builder.fastpath.USE_EVERY` old, and so must a hit, or the build cache's GC
(``builder.autogc``, ``pybuild builder prune --keep-storage``) would take the steps of an
image that only the fast path rebuilds as unused. A record keeps the keys of the steps
the build used and their oldest recorded use (:func:`last_use`); a hit past that use plus
``USE_EVERY`` records the use (:func:`record_use`).

Imported only to record (after a normal build, or by a hit whose use is due): ``sqlite3``
costs more than the rest of the fast path. Only ``cache.db`` is read or written here; the
fast path's own records are :mod:`builder.fastpath`'s.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection, Sequence
from urllib.parse import quote

__all__ = ["last_use", "record_use"]

_JULIAN_EPOCH = 2440587.5  # the Julian day of the Unix epoch: cache.db keeps Julian days
# How long recording a use waits for another build's write to cache.db; past it, the use
# is left to the next hit.
_WAIT = 1.0
_BATCH = 500  # keys per statement (SQLite's limit on variables: 999 before 3.32)


def _cache_db(storage: str) -> sqlite3.Connection:
    """``<storage>/builder/cache.db`` (never created: ``mode=rw``), in autocommit mode.
    Not ``mode=ro`` to read: that leaves an empty write-ahead log behind, a change to the
    storage's state the fast path compares."""
    path = os.path.join(storage, "builder", "cache.db")
    return sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=_WAIT,
                           isolation_level=None)


def last_use(storage: str, keys: Collection[str]) -> tuple[list[str], float | None]:
    """Those of the step ``keys`` that the build cache holds (sorted), and the oldest use
    it records of them as a Unix time (0 when one has none recorded; None when it holds
    none of them). Raises ``sqlite3.Error``."""
    wanted = sorted(keys)
    if not wanted or not os.path.exists(os.path.join(storage, "builder", "cache.db")):
        return [], None
    db = _cache_db(storage)
    try:
        rows: list[tuple[str, float | None]] = []
        for i in range(0, len(wanted), _BATCH):
            batch = wanted[i:i + _BATCH]
            rows += db.execute("SELECT key, used FROM steps WHERE key IN "
                               f"({','.join('?' * len(batch))})", batch).fetchall()
    finally:
        db.close()
    if not rows:
        return [], None
    oldest = min(_JULIAN_EPOCH if used is None else used for _, used in rows)
    return sorted(key for key, _ in rows), max(0.0, (oldest - _JULIAN_EPOCH) * 86400.0)


def record_use(storage: str, keys: Sequence[str], now: float) -> None:
    """Record that a build used the steps ``keys`` at ``now`` (a Unix time), as
    ``BuildCache.lookup`` records a hit (a later recorded use stays). On return the
    connection is closed, so the last one has checkpointed the write-ahead log: the
    storage's state can be read. Raises ``sqlite3.Error`` (a busy or read-only cache.db):
    nothing was recorded."""
    day = now / 86400.0 + _JULIAN_EPOCH
    db = _cache_db(storage)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(keys), _BATCH):
                batch = list(keys[i:i + _BATCH])
                db.execute("UPDATE steps SET used = ? WHERE (used IS NULL OR used < ?) AND key IN "
                           f"({','.join('?' * len(batch))})", [day, day, *batch])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()
