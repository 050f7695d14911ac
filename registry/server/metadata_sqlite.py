"""The embedded default :class:`~registry.server.metadata.Metadata`: one SQLite file
(``registry.db`` in the storage directory), WAL mode. The contract is the protocol's;
this docstring says how SQLite keeps it.

::

    repositories(name PK, created, tagged)      tagged: a tag was ever pushed to it
                                                (metadata_sqlite_tagged.py)
    manifests(repo, digest, media_type, size, subject, artifact_type, annotations, created)
        PK (repo, digest); index (repo, subject, created, digest, size) serves the referrers
        API (a page's order read from the index alone, not from rows holding annotations)
        (metadata_sqlite_referrers.py: a page in two statements, the order then the rows)
    tags(repo, tag, digest, updated)            PK (repo, tag); BINARY order = ASCIIbetical
    uploads(id PK, repo, created)               upload session -> repository
    proxy_tags(repo, tag, digest, checked)      PK (repo, tag): tags a pull-through cache
                                                fetched from upstream, and when it last asked
    manifest_refs, manifests.refs_known/pulled  retention (metadata_sqlite_retention.py)
    blob_recipes(repo, digest, recipe)          PK (repo, digest): a repository's own cut of
                                                a blob the store keeps cut otherwise
                                                (cas.meta.encode_recipe's bytes)

- Every method runs its SQL on one dedicated thread (the connection never leaves it), so
  callers on the event loop only ``await``; each write is one ``BEGIN IMMEDIATE``
  transaction, each read one statement (one snapshot).
- Several processes may open the same file (replicas on one machine): SQLite's file
  locks serialise the writers (``busy_timeout`` 10 s), and WAL lets every reader see the
  last commit at the start of its statement, so what one instance committed the next
  call of any other instance reads.
- :meth:`SqliteMetadata.generation` compares the header of the WAL-index (the ``-shm``
  file, mapped read-only: :mod:`registry.server.sqlite_wal`) with the one it read last:
  every commit rewrites it, whichever connection or process made it, and reading it is a
  memory access (a fraction of a microsecond, where ``PRAGMA data_version`` costs 5-9 us:
  it begins and ends a read transaction, two ``fcntl`` calls). Where the database is not
  in WAL mode it runs ``PRAGMA data_version`` on a second, read-only connection kept for
  the event loop (``busy_timeout`` 0; when SQLite answers busy, a value never returned
  before is, which only costs the caller a revalidation).
- :meth:`SqliteMetadata.close` runs on the worker thread too, after the calls queued
  before it; a call after it raises ``cas.StoreClosed``. A full or read-only disk is
  ``cas.StorageFull`` / ``cas.StorageNotWritable``, naming the file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from cas.errors import StoreClosed, mapped_error
from cas.meta import decode_recipe, encode_recipe
from cas.sqlite_db import migrate_schema, switch_to_wal

from ..oci import INDEX_TYPES
from .metadata import ManifestRecord, ManifestsMissing
from .metadata_sqlite_referrers import ReferrerQueries
from .metadata_sqlite_retention import (
    RETENTION_SCHEMA,
    RetentionQueries,
    add_retention_columns,
    record_references,
)
from .metadata_sqlite_tagged import add_tagged_column
from .sqlite_wal import WalIndex

__all__ = ["SCHEMA_VERSION", "SqliteMetadata"]

T = TypeVar("T")
SCHEMA_VERSION = 3  # registry.db's (cas.sqlite_db.migrate_schema): raise it with the schema
# 2: pull times recorded by every server (metadata_sqlite_retention.add_retention_columns)
# 3: repositories.tagged (metadata_sqlite_tagged.add_tagged_column)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repositories (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS manifests (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    subject TEXT,
    artifact_type TEXT,
    annotations TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (repo, digest)
);
DROP INDEX IF EXISTS manifests_subject;
CREATE INDEX IF NOT EXISTS manifests_referrers ON manifests (repo, subject, created, digest, size)
    WHERE subject IS NOT NULL;
CREATE TABLE IF NOT EXISTS tags (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (repo, tag)
);
CREATE INDEX IF NOT EXISTS tags_digest ON tags (repo, digest);
CREATE TABLE IF NOT EXISTS proxy_tags (
    repo TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    checked REAL NOT NULL,
    PRIMARY KEY (repo, tag)
);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    repo TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_recipes (
    repo TEXT NOT NULL,
    digest TEXT NOT NULL,
    recipe BLOB NOT NULL,
    PRIMARY KEY (repo, digest)
);
"""


class SqliteMetadata(RetentionQueries, ReferrerQueries):
    """:class:`~registry.server.metadata.Metadata` over one SQLite file; see the module
    docstring."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="registry-db")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._submit_lock = threading.Lock()  # a submit and the executor's shutdown
        # generation(): used only on the event loop's thread once open.
        self._watch: sqlite3.Connection | None = None
        self._wal: WalIndex | None = None
        self._header = b""  # the WAL-index header generation() read last
        self._version = 0  # generation()'s token while the WAL-index is read
        self._unknown = itertools.count(-1, -1)

    @classmethod
    async def open(cls, path: Path) -> SqliteMetadata:
        self = cls(path)
        await self._run(self._open)
        return self

    def _open(self) -> None:
        db = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=10.0, isolation_level=None)
            wal = switch_to_wal(db) == "wal"
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            migrate_schema(db, self._path, SCHEMA_VERSION, _SCHEMA, RETENTION_SCHEMA,
                           add_retention_columns, add_tagged_column)
            watch = sqlite3.connect(
                f"{self._path.absolute().as_uri()}?mode=ro", uri=True, isolation_level=None,
                check_same_thread=False,
            )
            watch.execute("PRAGMA busy_timeout=0")
            # Reading makes the connection open the WAL-index (and lock it against
            # re-initialisation) before it is mapped.
            watch.execute("PRAGMA data_version").fetchone()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise mapped_error(exc, self._path, self._path.parent) from exc
        self._db = db
        self._watch = watch
        # Only a WAL database's -shm is current (another mode may have left a stale one).
        self._wal = WalIndex.open(self._path) if wal else None

    def generation(self) -> int:
        """See the protocol; the WAL-index header, else ``PRAGMA data_version`` (module
        docstring)."""
        watch = self._watch
        if watch is None:
            raise self._closed_error()
        wal = self._wal
        if wal is not None and wal.usable:
            header = wal.header()
            if header != self._header:
                self._header = header
                self._version += 1
            return self._version
        try:
            version = int(watch.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:
            return next(self._unknown)  # busy: say "changed", never block the loop
        return version

    async def close(self) -> None:
        """Close after the calls queued before; later calls raise StoreClosed."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            watch, self._watch = self._watch, None  # no generation() past this point

            def close() -> None:
                if watch is not None:
                    watch.close()
                if self._db is not None:
                    self._db.close()
                    self._db = None
                if self._wal is not None:  # after the connections: see sqlite_wal.py
                    self._wal.release()

            done = asyncio.get_running_loop().run_in_executor(self._executor, close)
            self._executor.shutdown(wait=False)
        await done

    def _closed_error(self) -> StoreClosed:
        return StoreClosed(f"registry metadata {self._path}")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._submit_lock:
            if self._closed:
                raise self._closed_error()
            job = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await job
        except (sqlite3.Error, OSError) as exc:
            mapped = mapped_error(exc, self._path, self._path.parent)
            if mapped is exc:
                raise
            raise mapped from exc

    def _conn(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            raise self._closed_error()
        return db

    def _tx(self, fn: Callable[[sqlite3.Connection], T], durable: bool = False) -> Callable[[], T]:
        """``durable``: the commit reaches the disk before it returns (a client is told at
        once: synchronous=NORMAL syncs the WAL only at checkpoints, a power loss could take
        an acknowledged push back), as Distribution syncs what it acknowledges."""
        def run() -> T:
            db = self._conn()
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        return run

    def _query(self, sql: str, *args: Any) -> Callable[[], list[tuple[Any, ...]]]:
        def run() -> list[tuple[Any, ...]]:
            return self._conn().execute(sql, args).fetchall()

        return run

    # --- repositories ---------------------------------------------------------------------
    async def ensure_repository(self, name: str) -> None:
        await self._run(self._tx(lambda db: db.execute(
            "INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)", (name, time.time()))))

    async def repository_exists(self, name: str) -> bool:
        rows = await self._run(self._query("SELECT 1 FROM repositories WHERE name = ?", name))
        return bool(rows)

    async def repository_tagged(self, name: str) -> bool:
        return bool(await self._run(self._query("SELECT 1 FROM repositories WHERE name = ? AND tagged", name)))

    async def repositories(self, last: str | None, limit: int) -> list[str]:
        rows = await self._run(
            self._query(
                "SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?",
                last or "",
                limit,
            )
        )
        return [r[0] for r in rows]

    # --- manifests ------------------------------------------------------------------------
    async def put_manifest(self, record: ManifestRecord, tags: tuple[str, ...] = ()) -> None:
        """Record ``record`` in its repository and point ``tags`` at it, atomically."""
        now = time.time()
        annotations = json.dumps(record.annotations) if record.annotations else None

        refs = record.references

        def put(db: sqlite3.Connection) -> None:
            if refs and record.media_type in INDEX_TYPES:
                marks = ",".join("?" * len(refs))
                present = {
                    r[0]
                    for r in db.execute(
                        f"SELECT digest FROM manifests WHERE repo = ? AND digest IN ({marks})",
                        (record.repo, *refs),
                    )
                }
                missing = [d for d in dict.fromkeys(refs) if d not in present and d not in record.blob_entries]
                if missing:
                    raise ManifestsMissing(missing)  # rolls the transaction back
            db.execute("INSERT OR IGNORE INTO repositories (name, created) VALUES (?, ?)", (record.repo, now))
            # An upsert, not a replace: the last pull time stays.
            db.execute(
                "INSERT INTO manifests (repo, digest, media_type, size, subject, artifact_type,"
                " annotations, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (repo, digest) DO UPDATE SET media_type = excluded.media_type,"
                " size = excluded.size, subject = excluded.subject,"
                " artifact_type = excluded.artifact_type, annotations = excluded.annotations,"
                " created = excluded.created",
                (
                    record.repo,
                    record.digest,
                    record.media_type,
                    record.size,
                    record.subject,
                    record.artifact_type,
                    annotations,
                    now,
                ),
            )
            if refs is not None:
                record_references(db, record.repo, record.digest, refs)
            if tags:
                db.execute("UPDATE repositories SET tagged = 1 WHERE name = ?", (record.repo,))
            for tag in tags:
                db.execute(
                    "INSERT OR REPLACE INTO tags VALUES (?, ?, ?, ?)",
                    (record.repo, tag, record.digest, now),
                )

        await self._run(self._tx(put, durable=True))

    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        rows = await self._run(
            self._query(
                "SELECT media_type, size, subject, artifact_type, annotations FROM manifests "
                "WHERE repo = ? AND digest = ?",
                repo,
                digest,
            )
        )
        if not rows:
            return None
        media_type, size, subject, artifact_type, annotations = rows[0]
        return ManifestRecord(
            repo,
            digest,
            media_type,
            size,
            subject,
            artifact_type,
            json.loads(annotations) if annotations else None,
        )

    async def manifests_present(self, repo: str, digests: list[str]) -> set[str]:
        """Which of ``digests`` are manifests of ``repo``."""
        if not digests:
            return set()

        def run() -> set[str]:
            db = self._conn()
            found: set[str] = set()
            for i in range(0, len(digests), 500):
                part = digests[i : i + 500]
                marks = ",".join("?" * len(part))
                found.update(
                    r[0]
                    for r in db.execute(
                        f"SELECT digest FROM manifests WHERE repo = ? AND digest IN ({marks})",
                        (repo, *part),
                    )
                )
            return found

        return await self._run(run)

    async def delete_manifest(self, repo: str, digest: str) -> list[str] | None:
        """Drop the manifest and every tag pointing at it; the dropped tags, or None if absent."""

        def delete(db: sqlite3.Connection) -> list[str] | None:
            cur = db.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest))
            if cur.rowcount == 0:
                return None
            db.execute("DELETE FROM manifest_refs WHERE repo = ? AND parent = ?", (repo, digest))
            tags = [
                r[0]
                for r in db.execute(
                    "SELECT tag FROM tags WHERE repo = ? AND digest = ?", (repo, digest)
                )
            ]
            db.execute("DELETE FROM tags WHERE repo = ? AND digest = ?", (repo, digest))
            return tags

        return await self._run(self._tx(delete))

    # --- tags -----------------------------------------------------------------------------
    async def resolve_tag(self, repo: str, tag: str) -> str | None:
        rows = await self._run(
            self._query("SELECT digest FROM tags WHERE repo = ? AND tag = ?", repo, tag)
        )
        return rows[0][0] if rows else None

    async def tags(self, repo: str, last: str | None, limit: int) -> list[str]:
        rows = await self._run(
            self._query(
                "SELECT tag FROM tags WHERE repo = ? AND tag > ? ORDER BY tag LIMIT ?",
                repo,
                last or "",
                limit,
            )
        )
        return [r[0] for r in rows]

    async def delete_tag(self, repo: str, tag: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM tags WHERE repo = ? AND tag = ?", (repo, tag)).rowcount > 0

        return await self._run(self._tx(delete))

    # --- upload sessions ------------------------------------------------------------------
    async def add_upload(self, upload_id: str, repo: str) -> None:
        now = time.time()

        def add(db: sqlite3.Connection) -> None:
            # The repository itself appears only once something is committed to it.
            db.execute("INSERT INTO uploads VALUES (?, ?, ?)", (upload_id, repo, now))

        await self._run(self._tx(add))

    async def upload_repository(self, upload_id: str) -> str | None:
        rows = await self._run(self._query("SELECT repo FROM uploads WHERE id = ?", upload_id))
        return rows[0][0] if rows else None

    async def remove_upload(self, upload_id: str) -> None:
        await self._run(
            self._tx(lambda db: db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,)))
        )

    async def uploads(self) -> list[str]:
        return [r[0] for r in await self._run(self._query("SELECT id FROM uploads"))]

    # --- pull-through cache ---------------------------------------------------------------
    async def proxy_tag(self, repo: str, tag: str) -> tuple[str, float] | None:
        """The digest ``tag`` had upstream and when (``time.time()``) that was checked."""
        rows = await self._run(
            self._query(
                "SELECT digest, checked FROM proxy_tags WHERE repo = ? AND tag = ?", repo, tag
            )
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    async def set_proxy_tag(self, repo: str, tag: str, digest: str, checked: float) -> None:
        await self._run(
            self._tx(
                lambda db: db.execute(
                    "INSERT OR REPLACE INTO proxy_tags VALUES (?, ?, ?, ?)",
                    (repo, tag, digest, checked),
                )
            )
        )

    # --- a repository's own recipes -------------------------------------------------------
    async def set_blob_recipe(self, repo: str, digest: str,
                              recipe: list[tuple[str, int]] | None) -> None:
        def put(db: sqlite3.Connection) -> None:
            if recipe is None:
                db.execute("DELETE FROM blob_recipes WHERE repo = ? AND digest = ?", (repo, digest))
            else:
                db.execute("INSERT OR REPLACE INTO blob_recipes VALUES (?, ?, ?)",
                           (repo, digest, _encode(recipe)))

        await self._run(self._tx(put))

    async def blob_recipe(self, repo: str, digest: str) -> list[tuple[str, int]] | None:
        rows = await self._run(self._query(
            "SELECT recipe FROM blob_recipes WHERE repo = ? AND digest = ?", repo, digest))
        return _decode(rows[0][0]) if rows else None

    async def copy_blob_recipe(self, source: str, repo: str, digest: str) -> None:
        def copy(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM blob_recipes WHERE repo = ? AND digest = ?", (repo, digest))
            db.execute("INSERT INTO blob_recipes SELECT ?, digest, recipe FROM blob_recipes"
                       " WHERE repo = ? AND digest = ?", (repo, source, digest))

        await self._run(self._tx(copy))


def _encode(recipe: list[tuple[str, int]]) -> bytes:
    return encode_recipe((bytes.fromhex(k), n) for k, n in recipe)


def _decode(data: bytes) -> list[tuple[str, int]]:
    return [(k.hex(), n) for k, n in decode_recipe(bytes(data))]
