"""The referrers API's page order comes from an index alone on SQLite: walking the
referrers of a subject whose artifacts carry large annotations reads no row of them until
the page's own (a page's order query reading every remaining row made 300 referrers of
1 MB each take half a minute to walk)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from registry.server.metadata_sqlite import SqliteMetadata

ORDER = ("SELECT digest, size FROM manifests WHERE repo = ? AND subject = ? "
         "ORDER BY created, digest LIMIT ?")


def _plan(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return " ".join(str(row[-1]) for row in
                        db.execute("EXPLAIN QUERY PLAN " + ORDER, ("r", "s", -1)))


async def test_the_order_of_referrers_is_read_from_a_covering_index(tmp_path):
    meta = await SqliteMetadata.open(tmp_path / "registry.db")
    await meta.close()
    assert "COVERING INDEX" in _plan(tmp_path / "registry.db")


async def test_a_database_with_the_earlier_subject_index_gets_the_covering_one(tmp_path):
    path = tmp_path / "registry.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE manifests (repo TEXT NOT NULL, digest TEXT NOT NULL, media_type TEXT"
            " NOT NULL, size INTEGER NOT NULL, subject TEXT, artifact_type TEXT, annotations"
            " TEXT, created REAL NOT NULL, PRIMARY KEY (repo, digest));"
            "CREATE INDEX manifests_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;")
    assert "COVERING INDEX" not in _plan(path)
    meta = await SqliteMetadata.open(path)
    await meta.close()
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "manifests_subject" not in names
    assert "COVERING INDEX" in _plan(path)
