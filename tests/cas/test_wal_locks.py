"""Syncing meta.db's files keeps this process's SQLite locks.

POSIX record locks belong to a process and a file: closing any descriptor of meta.db drops
the locks all of this process's connections hold on it. Then another process (``pybuild
storage gc`` or ``retention`` beside ``pybuild serve``) closing its connection believes
itself the last one, checkpoints and deletes the ``-wal`` and ``-shm`` files the server
still uses, and every later request of the server fails with "database disk image is
malformed".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cas.sqlite_meta import SqliteMetadata

# Another process opens the database, writes, and closes its connection.
_OTHER_PROCESS = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS other(x)")
db.execute("INSERT INTO other VALUES (1)")
db.close()
"""


def _other_process_opens_and_closes(database: Path) -> None:
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(database)], check=True)


def test_another_process_closing_keeps_the_log_of_a_store_that_synced(tmp_path: Path) -> None:
    database = tmp_path / "meta.db"
    meta = SqliteMetadata(database)
    try:
        meta.link_all("repo:a", [])
        meta.make_durable()
        _other_process_opens_and_closes(database)
        assert (tmp_path / "meta.db-wal").exists()
        assert (tmp_path / "meta.db-shm").exists()
        meta.make_durable()
        _other_process_opens_and_closes(database)
        # Still one consistent database for this process: it reads what the other wrote.
        assert meta._q("SELECT count(*) FROM other") == [(2,)]
        assert meta._q("PRAGMA integrity_check") == [("ok",)]
    finally:
        meta.close()


def test_syncing_leaves_no_descriptor_behind(tmp_path: Path) -> None:
    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))

    SqliteMetadata(tmp_path / "warm.db").close()
    before = descriptors()
    for i in range(50):
        meta = SqliteMetadata(tmp_path / f"meta{i % 3}.db")
        second = SqliteMetadata(tmp_path / f"meta{i % 3}.db")
        meta.make_durable()
        second.make_durable()
        meta.close()
        second.make_durable()  # the first one's close left the second its descriptors
        second.close()
    assert descriptors() == before
