"""The local build cache: :class:`BuildCache`, SQLite in ``<storage>/builder/cache.db``.

The default :class:`builder.cache.BuildCacheBackend`. A step's key is ``sha256(parent
key, expanded instruction, inputs)`` where ``inputs`` maps each thing the step reads to a
content hash (a copied file's path -> hash, ``env`` -> the environment, ``user``,
``workdir``, ``args`` ...). The layer blob itself lives in the CAS, linked by holder
``cache:<key>``; a row whose blob vanished counts as a miss.

Every stored step also records ``(parent, instruction) -> inputs``, so a miss can be
explained: :meth:`BuildCache.explain` names the inputs that differ from the last build
of the same instruction on the same parent (or says the instruction or parent changed).
An imported entry (:meth:`BuildCache.import_manifest`) has ``inputs`` ``null``.

It also remembers the content hash of build-context files by their ``lstat`` (table
``file_hashes``: path -> size, mtime, ctime, inode, device, mode -> hash, as BuildKit's
contenthash does), so an unchanged context costs one ``lstat`` per file, not a read
(``builder.context.FileHashStore``); and ``pybuild builder prune`` removes old entries
(:meth:`BuildCache.prune_steps`). A step records when it was made (``created``) and when a
build last used it (``used``: recorded, found by :meth:`BuildCache.lookup`, or answered for
by the fast path: ``builder.fastpath_use``), so that the build cache's bound
(``builder.autogc``, ``--keep-storage``) drops the least recently used steps first
(:meth:`BuildCache.steps_by_use`, :meth:`BuildCache.drop_steps`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cas.errors import StoreClosed, mapped_error
from cas.sqlite_db import open_wal_database

from .entries import CachedLayer, miss_reason
from .manifest import CacheEntry, CacheManifest

__all__ = ["BuildCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    instruction TEXT NOT NULL,
    inputs TEXT NOT NULL,
    layer TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now')),
    used REAL
);
CREATE INDEX IF NOT EXISTS steps_parent ON steps(parent, instruction);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    stat TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""
SCHEMA_VERSION = 1  # cache.db's (cas.sqlite_db.migrate_schema): raise it with the schema
# A step's use is recorded again once its last recorded use is this old (seconds): the
# build-cache GC (builder.autogc) keeps every step used within it before a build began.
# builder.fastpath.USE_EVERY is the same (a hit records its steps' use: builder.fastpath_use).
USE_EVERY = 3600.0


class BuildCache:
    """Thread-safe (one connection, one lock); calls are short, callers may use threads.

    :meth:`close` takes the lock every call holds: it waits for the call in flight, and
    a call after it raises ``cas.StoreClosed``. A full or unwritable storage directory
    is ``cas.StorageFull`` / ``cas.StorageNotWritable``, naming the path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        self._db = open_wal_database(path, _SCHEMA, path.parent, SCHEMA_VERSION)
        try:
            _add_use_times(self._db)
        except sqlite3.Error as exc:
            self._db.close()
            raise mapped_error(exc, path, path.parent) from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, held for the block: StoreClosed after close, storage errors
        typed."""
        with self._lock:
            if self._closed:
                raise StoreClosed(f"build cache {self.path}")
            try:
                yield self._db
            except (sqlite3.Error, OSError) as exc:
                if self._db.in_transaction:  # a COMMIT that failed (a full disk)
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                mapped = mapped_error(exc, self.path, self.path.parent)
                if mapped is exc:
                    raise
                raise mapped from exc

    def lookup(self, key: str) -> CachedLayer | None:
        """The layer under ``key``; found, the step counts as used now (recorded when its
        last recorded use is :data:`USE_EVERY` old: a fully cached build writes nothing,
        which keeps other builds' fast-path records of this storage valid)."""
        with self._using():
            row = self._db.execute(
                "SELECT layer, used IS NULL OR used < julianday('now') - ? FROM steps WHERE key=?",
                (USE_EVERY / 86400, key)).fetchone()
            if row is not None and row[1]:  # a hit takes no write lock otherwise
                with contextlib.suppress(sqlite3.OperationalError):  # a read-only copy
                    self._db.execute("UPDATE steps SET used=julianday('now') WHERE key=?", (key,))
        return None if row is None else CachedLayer.from_json(row[0])

    def record(self, key: str, parent: str, instruction: str, inputs: dict[str, Any],
               layer: CachedLayer) -> None:
        with self._using():
            self._db.execute(
                "INSERT OR REPLACE INTO steps(key, parent, instruction, inputs, layer, used) "
                "VALUES (?, ?, ?, ?, ?, julianday('now'))",
                (key, parent, instruction, json.dumps(inputs, sort_keys=True), layer.to_json()))

    def file_hashes(self, paths: list[str]) -> dict[str, tuple[str, str]]:
        """path -> (stat signature, hash) for the paths that have an entry."""
        out: dict[str, tuple[str, str]] = {}
        with self._using():
            for i in range(0, len(paths), 500):
                batch = [_bindable(p) for p in paths[i:i + 500]]
                out.update((os.fsdecode(p), (s, h)) for p, s, h in self._db.execute(
                    "SELECT path, stat, hash FROM file_hashes WHERE path IN "
                    f"({','.join('?' * len(batch))})", batch))
        return out

    def put_file_hashes(self, rows: list[tuple[str, str, str]]) -> None:
        """Record (path, stat signature, hash) rows, replacing older ones."""
        if not rows:
            return
        with self._using():
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO file_hashes(path, stat, hash) VALUES (?, ?, ?)",
                    [(_bindable(p), st, h) for p, st, h in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def prune_steps(self, before: float | None) -> list[tuple[str, CachedLayer, str]]:
        """Remove the step entries created before ``before`` (a Unix time; None: all);
        returns what they held: ``(key, layer, instruction)``."""
        where, args = ("", ()) if before is None else \
            ("WHERE created < julianday(?, 'unixepoch')", (before,))
        with self._using():
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(f"SELECT key, layer, instruction FROM steps {where}",
                                        args).fetchall()
                self._db.execute(f"DELETE FROM steps {where}", args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return [(key, CachedLayer.from_json(layer), instruction)
                for key, layer, instruction in rows]

    def steps_by_use(self) -> list[tuple[str, float, CachedLayer]]:
        """Every entry with a layer: ``(key, last used as a Unix time, layer)`` (an entry
        no build used since it was made, or made before uses were recorded: its time made)."""
        with self._using():
            rows = self._db.execute(
                "SELECT key, (COALESCE(used, created) - 2440587.5) * 86400.0, layer "
                "FROM steps").fetchall()
        return [(key, used, layer) for key, used, text in rows
                if (layer := CachedLayer.from_json(text)).digest]

    def drop_steps(self, keys: Collection[str]) -> None:
        """Remove the entries ``keys`` (their blobs' holders are the caller's to unlink)."""
        with self._using():
            self._db.execute("BEGIN")
            try:
                self._db.executemany("DELETE FROM steps WHERE key=?", [(k,) for k in keys])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def layers(self) -> list[CachedLayer]:
        """Every layer the remaining entries hold (not the entries without one: steps
        that changed nothing, facts)."""
        with self._using():
            rows = self._db.execute("SELECT layer FROM steps").fetchall()
        return [layer for r in rows if (layer := CachedLayer.from_json(r[0])).digest]

    def prune_file_hashes(self, everything: bool) -> int:
        """Forget the hashes of context files that no longer exist (``everything``: all);
        returns how many."""
        with self._using():
            paths = [r[0] for r in self._db.execute("SELECT path FROM file_hashes")]
        gone = paths if everything else [p for p in paths if not os.path.lexists(p)]
        with self._using():
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM file_hashes WHERE path = ?", [(p,) for p in gone])
            self._db.execute("COMMIT")
        return len(gone)

    def explain(self, parent: str, instruction: str, inputs: dict[str, Any]) -> str:
        """Why ``(parent, instruction, inputs)`` has no cache entry, in one sentence."""
        with self._using():
            row = self._db.execute(
                "SELECT inputs, key FROM steps WHERE parent=? AND instruction=? "
                "AND inputs != 'null' ORDER BY created DESC, rowid DESC LIMIT 1",
                (parent, instruction)).fetchone()
            same_parent = self._db.execute(
                "SELECT 1 FROM steps WHERE parent=? LIMIT 1", (parent,)).fetchone()
            imported = None if row is not None else self._db.execute(
                "SELECT 1 FROM steps WHERE parent=? AND instruction=? AND inputs = 'null' "
                "LIMIT 1", (parent, instruction)).fetchone()
        return miss_reason(None if row is None else json.loads(row[0]),
                           same_parent is not None, inputs, imported=imported is not None,
                           previous_key=None if row is None else row[1], parent=parent,
                           instruction=instruction)

    def export_manifest(self, keys: Collection[str] | None = None) -> CacheManifest:
        with self._using():
            if keys is None:
                rows = self._db.execute(
                    "SELECT key, parent, instruction, layer FROM steps").fetchall()
            else:
                wanted = list(keys)
                rows = []
                for i in range(0, len(wanted), 500):
                    batch = wanted[i:i + 500]
                    rows += self._db.execute(
                        "SELECT key, parent, instruction, layer FROM steps WHERE key IN "
                        f"({','.join('?' * len(batch))})", batch).fetchall()
        return CacheManifest.of(CacheEntry(key, parent, instruction, CachedLayer.from_json(layer))
                                for key, parent, instruction, layer in rows)

    def import_manifest(self, manifest: CacheManifest) -> int:
        with self._using():
            self._db.execute("BEGIN")
            try:
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO steps(key, parent, instruction, inputs, layer) "
                    "VALUES (?, ?, ?, 'null', ?)",
                    [(e.key, e.parent, e.instruction, e.layer.to_json())
                     for e in manifest.entries])
                added = self._db.total_changes - before
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return added


def _add_use_times(db: sqlite3.Connection) -> None:
    """A cache made before steps recorded their last use gets the column (NULL: its time
    made stands for it). Older releases, which name their columns, read and write it still."""
    if "used" not in {row[1] for row in db.execute("PRAGMA table_info(steps)")}:
        try:
            db.execute("ALTER TABLE steps ADD COLUMN used REAL")
        except sqlite3.OperationalError as exc:
            if "duplicate column" not in str(exc) and "readonly" not in str(exc):
                raise  # (another process added it first; a read-only copy is read as is)


def _bindable(path: str) -> str | bytes:
    """``path`` as SQLite can take it: its text, or its bytes when it is no UTF-8 (a name
    read with ``surrogateescape``, e.g. Latin-1 bytes: SQLite refuses surrogates). Read
    back, :func:`os.fsdecode` makes both the same string again."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path
