"""``events.db``: the notifications not yet delivered, per endpoint, in order.

Several ``pybuild serve`` processes may share a storage directory, and so this file. Each
row belongs to the process that wrote it (``owner``: that notifier's instance id), and
only its owner sends it: two processes sending the same row would deliver most events
twice. A process holds an exclusive ``flock`` on ``events.<owner>.lock`` (beside the
database) for as long as it runs; a process that finds rows of an owner whose lock it
can take (that owner stopped, or was killed) adopts them, so no event is left behind.
Rows of an ``events.db`` from before owners were recorded have none and are adopted the
same way. Every method runs in the notifier's one database thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

from cas.sqlite_db import migrate_schema, switch_to_wal

__all__ = ["SCHEMA_VERSION", "EventQueue"]

SCHEMA_VERSION = 1  # events.db's (cas.sqlite_db.migrate_schema): raise it with the schema


def _add_owners(db: sqlite3.Connection) -> None:
    """An ``events.db`` from before owners were recorded gets the column (rows: none)."""
    if "owner" not in {row[1] for row in db.execute("PRAGMA table_info(events)")}:
        db.execute("ALTER TABLE events ADD COLUMN owner TEXT")


class EventQueue:
    """The rows of ``path`` that ``owner`` sends (see the module docstring)."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path = path
        self.owner = owner
        self._lock_fd: int | None = None
        self.db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        try:
            switch_to_wal(self.db)
            self.db.execute("PRAGMA synchronous=NORMAL")
            migrate_schema(
                self.db, path, SCHEMA_VERSION,
                "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " endpoint TEXT NOT NULL, body TEXT NOT NULL, owner TEXT);", _add_owners,
                "CREATE INDEX IF NOT EXISTS events_by_endpoint ON events (endpoint, seq);")
            # Locked before it appears under its name: another process that finds it
            # unlocked takes its owner for gone.
            making = self.path.with_name(f".events.{owner}.lock")
            self._lock_fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            os.rename(making, self._lock_path(owner))
        except BaseException:
            self.close()
            raise

    def _lock_path(self, owner: str) -> Path:
        return self.path.with_name(f"events.{owner}.lock")

    def adopt(self) -> int:
        """Take over the rows of owners that no longer run (and remove the lock files
        of those killed with nothing left to send); how many rows were taken."""
        with_rows = {row[0] for row in self.db.execute("SELECT DISTINCT owner FROM events")}
        locks = {p.name[len("events."):-len(".lock")] for p in self.path.parent.glob("events.*.lock")}
        taken = 0
        for owner in (with_rows | locks) - {self.owner}:
            fd = None
            if owner is not None and "/" not in owner:
                try:
                    fd = os.open(self._lock_path(owner), os.O_RDWR | os.O_CLOEXEC)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except FileNotFoundError:
                    fd = None  # its process has stopped, or it was adopted already
                except BlockingIOError:
                    if fd is not None:
                        os.close(fd)
                    continue  # its process runs: it sends them
            try:
                if owner in with_rows:
                    with self.db:
                        taken += self.db.execute(
                            "UPDATE events SET owner = ? WHERE owner IS ?", (self.owner, owner)).rowcount
            finally:
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(self._lock_path(owner))
                    os.close(fd)
        return taken

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT endpoint, count(*) FROM events WHERE owner = ? GROUP BY endpoint", (self.owner,)).fetchall())

    def add(self, rows: list[tuple[str, str]]) -> None:
        with self.db:
            self.db.executemany("INSERT INTO events (endpoint, body, owner) VALUES (?, ?, ?)",
                                [(endpoint, body, self.owner) for endpoint, body in rows])

    def head(self, endpoint: str) -> tuple[int, str] | None:
        row = self.db.execute(
            "SELECT seq, body FROM events WHERE endpoint = ? AND owner = ? ORDER BY seq LIMIT 1",
            (endpoint, self.owner),
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def remove(self, seq: int) -> None:
        self.db.execute("DELETE FROM events WHERE seq = ?", (seq,))

    def close(self) -> None:
        """Close the database; the rows left stay for whoever runs next (the lock goes
        with its file: a later process has nothing to adopt from a clean stop but rows)."""
        self.db.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path(self.owner))
            os.close(self._lock_fd)
            self._lock_fd = None
