"""The WAL-index header as SQLite's commit signal (registry/server/sqlite_wal.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry.server import sqlite_wal
from registry.server.metadata import ManifestRecord
from registry.server.metadata_sqlite import SqliteMetadata
from registry.server.sqlite_wal import WalIndex

# SQLite's unix VFS: the "dead man switch" byte of the -shm file, read-locked by every
# process with a connection open (os_unix.c: UNIX_SHM_DMS = (22 + 8) * 4 + 8).
_DMS_BYTE = 128


def _wal_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    return db


def test_the_header_changes_with_every_commit_and_only_then(tmp_path: Path):
    db = _wal_db(tmp_path / "a.db")
    index = WalIndex.open(tmp_path / "a.db")
    assert index.usable
    seen = [index.header()]
    assert index.header() == seen[0]  # nothing committed
    db.execute("INSERT INTO t VALUES (1)")
    seen.append(index.header())
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    other.execute("INSERT INTO t VALUES (2)")  # another connection's commit
    seen.append(index.header())
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the next commit restarts the WAL
    other.execute("INSERT INTO t VALUES (3)")
    seen.append(index.header())
    db.execute("SELECT * FROM t").fetchall()  # a read commits nothing
    assert index.header() == seen[-1]
    assert len(set(seen)) == len(seen), "a commit left the header as it was"
    other.close()
    db.close()
    index.release()
    assert not index.usable


def test_a_database_without_a_wal_index_is_not_read_through_it(tmp_path: Path):
    db = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
    db.execute("CREATE TABLE t (x)")
    index = WalIndex.open(tmp_path / "journal.db")
    assert not index.usable
    with pytest.raises(ValueError, match="not mapped"):
        index.header()
    index.release()
    db.close()


async def test_generation_falls_back_to_data_version_without_a_wal_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(WalIndex, "open", classmethod(lambda cls, path: cls(None, None)))
    meta = await SqliteMetadata.open(tmp_path / "registry.db")
    before = meta.generation()
    assert meta.generation() == before
    await meta.ensure_repository("app")
    assert meta.generation() != before
    await meta.close()


def _locked_by_another_process(shm: Path) -> bool:
    """Whether a process other than a new one holds a lock on the -shm's DMS byte."""
    if not shm.exists():  # SQLite removes it with the last connection
        return False
    script = textwrap.dedent(f"""
        import fcntl, os, struct
        fd = os.open({str(shm)!r}, os.O_RDWR)
        query = struct.pack("@hhqqi", fcntl.F_WRLCK, os.SEEK_SET, {_DMS_BYTE}, 1, 0).ljust(32, b"\\0")
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        print(struct.unpack("@hhqqi", answer[:28])[0] != fcntl.F_UNLCK)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.strip() == "True"


async def test_closing_one_instance_keeps_the_locks_sqlite_holds_for_the_others(tmp_path: Path):
    """POSIX drops all of a process's locks on a file when it closes any descriptor of
    it: the -shm is closed only with its last user, or another process could take this
    one for gone and re-initialise the WAL-index under it."""
    path = tmp_path / "registry.db"
    a = await SqliteMetadata.open(path)
    b = await SqliteMetadata.open(path)
    shm = Path(f"{path}-shm")
    assert _locked_by_another_process(shm)
    await a.close()
    assert _locked_by_another_process(shm)
    # b still sees commits, its own and another process's.
    before = b.generation()
    await b.put_manifest(ManifestRecord("app", "sha256:" + "1" * 64, "application/x", 1), ())
    assert b.generation() != before
    await b.close()
    assert not _locked_by_another_process(shm)
    assert sqlite_wal._files == {}  # nothing left open


async def test_a_pushed_manifest_is_on_disk_before_the_push_is_answered(tmp_path: Path) -> None:
    # synchronous=NORMAL (the database's setting) syncs the WAL only at checkpoints: a power
    # loss could take back a manifest PUT the client was told of. Its commit runs FULL.
    meta = await SqliteMetadata.open(tmp_path / "registry.db")
    db = meta._db
    assert db is not None
    statements: list[str] = []
    await meta._run(db.set_trace_callback, statements.append)
    await meta.ensure_repository("app")
    assert "PRAGMA synchronous=FULL" not in statements  # not for every write: for what is told
    record = ManifestRecord("app", "sha256:" + "a" * 64, "application/vnd.oci.image.manifest.v1+json", 2)
    await meta.put_manifest(record, ("latest",))
    full = statements.index("PRAGMA synchronous=FULL")
    assert statements.index("COMMIT", full) > full
    assert await meta._run(lambda: db.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
    await meta.ensure_repository("other")  # the next write is back to NORMAL
    assert await meta._run(lambda: db.execute("PRAGMA synchronous").fetchone()[0]) == 1
    await meta.close()
