"""The retention half of :class:`~registry.server.metadata_sqlite.SqliteMetadata`: pull
times, recorded references and :meth:`collect`, each one transaction on the backend's
worker thread (the module docstring of ``metadata_sqlite`` says how).

Tables it adds to ``registry.db``::

    manifests.refs_known, manifests.pulled      columns: references recorded (0/1); last pull
    manifest_refs(repo, parent, child)          PK (repo, parent, child); index (repo, child):
                                                what each manifest references (an index's
                                                manifests, an image's config and layers)
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from .metadata import CollectResult, TagRecord

__all__ = ["RETENTION_SCHEMA", "RetentionQueries", "add_retention_columns"]

T = TypeVar("T")

RETENTION_SCHEMA = """
CREATE TABLE IF NOT EXISTS manifest_refs (
    repo TEXT NOT NULL,
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (repo, parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifest_refs_child ON manifest_refs (repo, child);
"""

# Untagged, old enough, no remaining manifest references it, its subject (if any) gone.
_UNTAGGED = """
SELECT m.digest, m.media_type FROM manifests m
WHERE m.repo = ?1 AND m.created < ?2
  AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo = m.repo AND t.digest = m.digest)
  AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                  WHERE r.repo = m.repo AND r.child = m.digest AND r.parent != m.digest)
  AND (m.subject IS NULL OR NOT EXISTS
       (SELECT 1 FROM manifests s WHERE s.repo = m.repo AND s.digest = m.subject))
LIMIT 500
"""


def add_retention_columns(db: sqlite3.Connection) -> None:
    """Add the columns retention needs to a ``manifests`` table made before it, in one
    transaction (another process opening the file meanwhile finds them all or none).

    Pull times are recorded by every ``pybuild serve`` from schema version 2 on (before,
    only by those configured for retention): the manifests of an earlier file count as
    pulled at the moment it is migrated. Their pulls were not (all) recorded, and a NULL
    time would make every one look never pulled, so a ``pulled_within`` rule would delete
    images pulled every day; now it keeps them for its span, while their pulls are
    recorded."""
    wanted = (("refs_known", "INTEGER NOT NULL DEFAULT 0"), ("pulled", "REAL"))
    if (int(db.execute("PRAGMA user_version").fetchone()[0]) >= 2 and {name for name, _ in wanted}
            <= {row[1] for row in db.execute("PRAGMA table_info(manifests)")}):
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        columns = {row[1] for row in db.execute("PRAGMA table_info(manifests)")}
        for name, decl in wanted:
            if name not in columns:
                db.execute(f"ALTER TABLE manifests ADD COLUMN {name} {decl}")
        if int(db.execute("PRAGMA user_version").fetchone()[0]) < 2:
            db.execute("UPDATE manifests SET pulled = ? WHERE pulled IS NULL", (time.time(),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def record_references(
    db: sqlite3.Connection, repo: str, digest: str, references: tuple[str, ...]
) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO manifest_refs VALUES (?, ?, ?)",
        [(repo, digest, child) for child in dict.fromkeys(references)],
    )
    db.execute(
        "UPDATE manifests SET refs_known = 1 WHERE repo = ? AND digest = ?", (repo, digest)
    )


class RetentionQueries:
    """Mixed into ``SqliteMetadata``, which provides ``_run``, ``_tx``, ``_query`` and
    ``_conn``."""

    _run: Callable[..., Any]
    _tx: Callable[[Callable[[sqlite3.Connection], Any]], Callable[[], Any]]
    _query: Callable[..., Callable[[], list[tuple[Any, ...]]]]
    _conn: Callable[[], sqlite3.Connection]

    async def tag_records(self, repo: str) -> list[TagRecord]:
        rows = await self._run(
            self._query(
                "SELECT t.tag, t.digest, t.updated, m.pulled FROM tags t LEFT JOIN manifests m"
                " ON m.repo = t.repo AND m.digest = t.digest WHERE t.repo = ? ORDER BY t.tag",
                repo,
            )
        )
        return [TagRecord(tag, digest, float(pushed), pulled) for tag, digest, pushed, pulled in rows]

    async def record_pulls(self, pulls: list[tuple[str, str, float]]) -> None:
        if not pulls:
            return

        def record(db: sqlite3.Connection) -> None:
            db.executemany(
                "UPDATE manifests SET pulled = ?3 WHERE repo = ?1 AND digest = ?2"
                " AND (pulled IS NULL OR pulled < ?3)",
                pulls,
            )

        await self._run(self._tx(record))

    async def renew_manifest(self, repo: str, digest: str, pushed_before: float) -> float | None:
        # Read first: a write transaction would take the write lock and move the
        # generation (every process's manifest cache asks again) for nothing.
        rows = await self._run(self._query(
            "SELECT created FROM manifests WHERE repo = ? AND digest = ?", repo, digest))
        if not rows:
            return None
        if float(rows[0][0]) >= pushed_before:
            return float(rows[0][0])

        def renew(db: sqlite3.Connection) -> float | None:
            db.execute("UPDATE manifests SET created = ?3 WHERE repo = ?1 AND digest = ?2"
                       " AND created < ?3", (repo, digest, time.time()))
            row = db.execute("SELECT created FROM manifests WHERE repo = ? AND digest = ?",
                             (repo, digest)).fetchone()
            return None if row is None else float(row[0])

        pushed: float | None = await self._run(self._tx(renew))
        return pushed

    async def unknown_references(self, repo: str, limit: int) -> list[str]:
        rows = await self._run(
            self._query(
                "SELECT digest FROM manifests WHERE repo = ? AND refs_known = 0 LIMIT ?", repo, limit
            )
        )
        return [r[0] for r in rows]

    async def set_references(self, repo: str, digest: str, references: tuple[str, ...]) -> None:
        def put(db: sqlite3.Connection) -> None:
            if db.execute(
                "SELECT 1 FROM manifests WHERE repo = ? AND digest = ?", (repo, digest)
            ).fetchone():
                record_references(db, repo, digest, references)

        await self._run(self._tx(put))

    async def collect(
        self, repo: str, tags: list[TagRecord], untagged_before: float, *, dry_run: bool = False
    ) -> CollectResult:
        def run() -> CollectResult:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = _collect(db, repo, tags, untagged_before)
                db.execute("ROLLBACK" if dry_run else "COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        result: CollectResult = await self._run(run)
        return result


def _collect(
    db: sqlite3.Connection, repo: str, tags: list[TagRecord], untagged_before: float
) -> CollectResult:
    dropped: list[tuple[str, str]] = []
    for t in tags:
        cur = db.execute(
            "DELETE FROM tags WHERE repo = ? AND tag = ? AND digest = ? AND updated = ?",
            (repo, t.tag, t.digest, t.pushed),
        )
        if cur.rowcount:
            dropped.append((t.tag, t.digest))
    removed: list[tuple[str, str]] = []
    while rows := db.execute(_UNTAGGED, (repo, untagged_before)).fetchall():
        for digest, media_type in rows:
            db.execute("DELETE FROM manifests WHERE repo = ? AND digest = ?", (repo, digest))
            db.execute("DELETE FROM manifest_refs WHERE repo = ? AND parent = ?", (repo, digest))
            removed.append((digest, media_type))
    referenced = {
        r[0]
        for r in db.execute(
            "SELECT digest FROM manifests WHERE repo = ?1 UNION SELECT child FROM manifest_refs"
            " WHERE repo = ?1",
            (repo,),
        )
    }
    return CollectResult(dropped, removed, referenced)
