"""The SQLite database under :class:`~cas.sqlite_meta.SqliteMetadata`: its schema, its
connections and its transactions (one writer connection, one reader connection).

Schema (``meta.db``)::

    pieces(key BLOB PRIMARY KEY, length, stored, codec, pack, offset, data, refs)
    blobs(digest TEXT PRIMARY KEY, size, recipe BLOB, created)     recipe: (key, length)*
    links(holder, digest, linked)                                 who holds a blob, since when
                                                                  (last linked: time.time())
    ingests(id PRIMARY KEY, algorithm, offset, npieces, pack, pack_size, tail_len, created, updated)
    ingest_pieces(ingest, seq, key, length, stored, codec, pack, offset, data)
    packs(name PRIMARY KEY, live, created)                        live: bytes of live pieces
    trash(id, pack, offset, length)                               ranges to free (offset NULL: whole pack)

Every SQLite file of pybuild carries the version of its schema in its header (``PRAGMA
user_version``, :func:`migrate_schema`): ``meta.db`` :data:`META_SCHEMA_VERSION`; files
made before versions were kept read 0 and are migrated like any older version.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SchemaTooNew, StorageNotWritable, StoreClosed, mapped_error, storage_error
from .read_only import READ_ONLY_CAUSE, read_only_uri

__all__ = ["META_SCHEMA_VERSION", "SCHEMA", "SqliteDatabase", "connect", "migrate_schema",
           "open_wal_database", "switch_to_wal"]

# meta.db's schema; raised by a release whose schema an earlier release cannot use.
META_SCHEMA_VERSION = 1


class _HeldFiles:
    """Descriptors of database files opened to fsync them, kept open while any
    :class:`SqliteDatabase` of this process has that database open.

    POSIX record locks belong to a process and a file, not to a descriptor: closing *any*
    descriptor of ``meta.db`` drops the locks every SQLite connection of this process
    holds on it. Another process closing its last connection then finds no one else there,
    checkpoints and deletes the ``-wal`` and ``-shm`` files this process still uses, and
    this process's next read fails with "database disk image is malformed" (SQLite's
    "How To Corrupt", 2.2). SQLite itself defers such closes; so do these."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[tuple[int, int], int] = {}
        self._fds: dict[tuple[int, int], dict[Path, int]] = {}

    def hold(self, database: Path) -> tuple[int, int]:
        """Count one more user of ``database``; the key to pass to the other methods."""
        st = os.stat(database)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            self._users[key] = self._users.get(key, 0) + 1
        return key

    def descriptor(self, key: tuple[int, int], path: Path) -> int:
        """A read-only descriptor of ``path`` (the database or one of its files), opened
        once and kept until the database's last user lets go."""
        with self._lock:
            fds = self._fds.setdefault(key, {})
            if path not in fds:
                fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            return fds[path]

    def let_go(self, key: tuple[int, int]) -> None:
        """One user fewer; the last one closes the descriptors (its connections closed first)."""
        with self._lock:
            self._users[key] -= 1
            if self._users[key]:
                return
            del self._users[key]
            for fd in self._fds.pop(key, {}).values():
                os.close(fd)


_HELD_FILES = _HeldFiles()


class SqliteDatabase:
    """The connections to one SQLite metadata database, and its transactions.

    Thread-safe: one writer connection behind a lock, one reader connection behind another.

    Every use of a connection holds that connection's lock, and :meth:`close` takes both
    locks: it waits for the calls in flight, and a call after it raises
    :class:`StoreClosed` (closing a connection another thread is using can crash the
    interpreter). SQLite and OS errors of a full or read-only file system become
    :class:`StorageFull` / :class:`StorageNotWritable` naming the database file.

    ``read_only``: the file is on a read-only file system (:mod:`cas.read_only`); both
    connections only read it, and every write transaction raises StorageNotWritable."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        #: Opened read-only (on a read-only file system): writes are refused.
        self.read_only = read_only
        self._lock = threading.RLock()
        self._closed = False
        # Lookups of pieces and blobs go through a second connection: in WAL mode a
        # reader sees the last commit without waiting for the writer, so a GET or an
        # ingest looking for known pieces never waits behind another ingest's commit
        # (and its fsync).
        self._reader_lock: threading.Lock | threading.RLock = threading.Lock()
        self._sync_lock = threading.Lock()  # make_durable's descriptors outlive its fsyncs
        db = reader = None
        try:
            if read_only:
                db = connect(read_only_uri(path), uri=True)
                migrate_schema(db, path, META_SCHEMA_VERSION, SCHEMA, _add_link_times)
                reader = connect(read_only_uri(path), uri=True)
            else:
                db = connect(str(path))
                switch_to_wal(db)
                # NORMAL in WAL mode: a process crash loses nothing committed; pack bytes
                # are fsynced before the transaction that references them.
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("PRAGMA foreign_keys=OFF")
                migrate_schema(db, path, META_SCHEMA_VERSION, SCHEMA, _add_link_times)
                reader = connect(str(path))
        except (sqlite3.Error, OSError) as exc:
            mapped = mapped_error(exc, path, path.parent)  # before closing: its files count
            for conn in (db, reader):
                if conn is not None:
                    conn.close()
            raise mapped from exc
        self._db, self._reader = db, reader
        self._files = _HELD_FILES.hold(path)

    def close(self) -> None:
        """Wait for the calls in flight, then close; later calls raise StoreClosed."""
        with self._lock, self._reader_lock, self._sync_lock:
            if self._closed:
                return
            self._closed = True
            self._reader.close()
            self._db.close()
            _HELD_FILES.let_go(self._files)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"metadata database {self.path}")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The reader connection, held for the block (StoreClosed once closed)."""
        with self._reader_lock:
            self._check_open()
            try:
                yield self._reader
            except (sqlite3.Error, OSError) as exc:
                mapped = storage_error(exc, self.path)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

    def read_only_target(self) -> str:
        """The URI of this database for a connection that only reads it."""
        if self.read_only:
            return read_only_uri(self.path)
        # as_uri() escapes what a URI would take for its query or fragment ('?', '#', '%')
        return f"{Path(self.path).absolute().as_uri()}?mode=ro"

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._check_open()
            if self.read_only:
                raise StorageNotWritable(self.path, READ_ONLY_CAUSE)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except (sqlite3.Error, OSError) as exc:
                mapped = storage_error(exc, self.path)
                if mapped is None:
                    raise
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if mapped is exc:
                    raise
                raise mapped from exc

    def _q(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple]:  # type: ignore[type-arg]
        with self._lock:
            self._check_open()
            try:
                return self._db.execute(sql, args).fetchall()
            except (sqlite3.Error, OSError) as exc:
                mapped = storage_error(exc, self.path)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc

    def make_durable(self) -> None:
        """Every commit so far on disk, not only in the page cache: synchronous=NORMAL
        syncs the write-ahead log only at checkpoints, so a power loss may take back the
        last commits (a process crash never does). Call it before acting on a commit in a
        way that cannot be taken back (freeing the pack bytes it gave up)."""
        with self._sync_lock:
            self._check_open()
            for p in (self.path.with_name(self.path.name + "-wal"), self.path):
                try:
                    fd = _HELD_FILES.descriptor(self._files, p)
                except FileNotFoundError:
                    continue
                try:
                    os.fsync(fd)
                except OSError as exc:
                    mapped = storage_error(exc, self.path)
                    if mapped is None or mapped is exc:
                        raise
                    raise mapped from exc

    def disk_bytes(self) -> int:
        """The database file and its write-ahead log."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
        return total


def _add_link_times(db: sqlite3.Connection) -> None:
    """Stores made before links carried the time they were last made get the column;
    their links count as old (0), which only matters to :meth:`unlink_stale`."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(links)")}
    if "linked" not in columns:
        try:
            db.execute("ALTER TABLE links ADD COLUMN linked REAL NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc):  # another process added it first
                raise


def migrate_schema(db: sqlite3.Connection, path: Path, version: int,
                   *steps: str | Callable[[sqlite3.Connection], None]) -> None:
    """Bring the database file ``path`` (open as ``db``) to schema ``version``: run
    ``steps`` in order (scripts of ``CREATE ... IF NOT EXISTS``, functions adding what
    earlier schemas lack), then stamp ``version`` in the file (``PRAGMA user_version``).

    A file stamped with a later version is refused before anything runs, untouched:
    :class:`SchemaTooNew`. A newer pybuild wrote it, and this code would half-write or
    drop what it keeps there (an ``INSERT`` of fewer columns than a table has fails)."""
    stored = int(db.execute("PRAGMA user_version").fetchone()[0])
    if stored > version:
        raise SchemaTooNew(path, stored, version)
    for step in steps:
        if isinstance(step, str):
            db.executescript(step)
        else:
            step(db)
    if stored < version:
        try:
            db.execute(f"PRAGMA user_version = {int(version)}")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc):  # a read-only copy is read as it is
                raise


def connect(target: str, uri: bool = False) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE in _tx).
    return sqlite3.connect(target, uri=uri, timeout=60.0, isolation_level=None, check_same_thread=False)


def switch_to_wal(db: sqlite3.Connection, patience: float = 10.0) -> str:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock: two
    first opens of one file at once both switch it, and SQLite answers the second "database
    is locked" at once, without calling the busy handler. The mode now in effect (SQLite
    keeps the old one where WAL is impossible)."""
    deadline = time.monotonic() + patience
    pause = 0.005
    while True:
        try:
            return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def open_wal_database(path: Path, schema: str, scope: Path, version: int = 1, *,
                      read_only: bool = False) -> sqlite3.Connection:
    """A connection to the SQLite file ``path`` in WAL mode (waiting up to 10 s for a
    writer), with ``schema`` applied and ``version`` stamped (:func:`migrate_schema`); a full
    or unwritable file system is the store's typed error naming ``scope``. For the small
    databases beside the store (images, build cache).

    ``read_only``: ``path`` is on a read-only file system (:mod:`cas.read_only`): the
    connection only reads it (a write raises SQLite's "readonly", which
    :func:`~cas.errors.mapped_error` makes StorageNotWritable), and a file that is not
    there reads as empty (an in-memory database with ``schema``): nothing was stored."""
    db = None
    try:
        if read_only:
            target, uri = (read_only_uri(path), True) if path.exists() else (":memory:", False)
            db = sqlite3.connect(target, uri=uri, timeout=10.0, check_same_thread=False,
                                 isolation_level=None)
            migrate_schema(db, path, version, schema)
            return db
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
        switch_to_wal(db)
        migrate_schema(db, path, version, schema)
    except (sqlite3.Error, OSError) as exc:
        mapped = mapped_error(exc, path, scope)  # before closing: its files count
        if db is not None:
            db.close()
        raise mapped from exc
    return db


SCHEMA = """
CREATE TABLE IF NOT EXISTS pieces(
    key BLOB PRIMARY KEY, length INTEGER NOT NULL, stored INTEGER NOT NULL,
    codec INTEGER NOT NULL, pack TEXT, offset INTEGER, data BLOB, refs INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS pieces_refs ON pieces(refs) WHERE refs <= 0;
CREATE TABLE IF NOT EXISTS blobs(
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, recipe BLOB NOT NULL,
    created REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links(
    holder TEXT NOT NULL, digest TEXT NOT NULL, linked REAL NOT NULL DEFAULT 0,
    PRIMARY KEY(holder, digest)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_digest ON links(digest);
CREATE TABLE IF NOT EXISTS ingests(
    id TEXT PRIMARY KEY, algorithm TEXT NOT NULL, offset INTEGER NOT NULL,
    npieces INTEGER NOT NULL, pack TEXT, pack_size INTEGER NOT NULL,
    tail_len INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS ingest_pieces(
    ingest TEXT NOT NULL, seq INTEGER NOT NULL, key BLOB NOT NULL, length INTEGER NOT NULL,
    stored INTEGER, codec INTEGER, pack TEXT, offset INTEGER, data BLOB,
    PRIMARY KEY(ingest, seq));
CREATE INDEX IF NOT EXISTS ingest_pieces_key ON ingest_pieces(key);
CREATE TABLE IF NOT EXISTS packs(
    name TEXT PRIMARY KEY, live INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trash(
    id INTEGER PRIMARY KEY AUTOINCREMENT, pack TEXT NOT NULL, offset INTEGER, length INTEGER);
"""
