"""``repositories.tagged`` in ``registry.db`` (schema version 3): whether a tag was ever
pushed to the repository. CNCF Distribution answers ``tags/list`` of a repository never
tagged (only blobs, or manifests pushed by digest) 404 ``NAME_UNKNOWN``, and of one whose
tags were all deleted since 200 with no tags: its tags directory, once made, stays."""

from __future__ import annotations

import sqlite3

__all__ = ["add_tagged_column"]


def add_tagged_column(db: sqlite3.Connection) -> None:
    """Add ``repositories.tagged`` to a table made before it, in one transaction (another
    process opening the file meanwhile finds it done or not at all).

    Earlier files did not record it: a repository is counted as tagged if it holds a tag
    or a manifest now (one whose tags were deleted keeps its old answer, an empty list);
    one that holds neither (only blobs) was never tagged."""
    if "tagged" in {row[1] for row in db.execute("PRAGMA table_info(repositories)")}:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if "tagged" not in {row[1] for row in db.execute("PRAGMA table_info(repositories)")}:
            db.execute("ALTER TABLE repositories ADD COLUMN tagged INTEGER NOT NULL DEFAULT 0")
            db.execute("UPDATE repositories SET tagged = 1"
                       " WHERE EXISTS (SELECT 1 FROM tags WHERE tags.repo = repositories.name)"
                       " OR EXISTS (SELECT 1 FROM manifests WHERE manifests.repo = repositories.name)")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
