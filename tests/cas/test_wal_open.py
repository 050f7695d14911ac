"""Opening one small WAL database from several processes at once (an image store and a
build cache on a fresh runner: two commands start together)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from cas.sqlite_db import open_wal_database

SCHEMA = "CREATE TABLE IF NOT EXISTS t(k TEXT PRIMARY KEY, v TEXT);"


def _open_and_write(path: str, start: multiprocessing.synchronize.Barrier, n: int) -> None:
    start.wait()
    db = open_wal_database(Path(path), SCHEMA, Path(path).parent)
    try:
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?, ?)", (str(n), "x" * 100_000))
            db.execute("COMMIT")
    finally:
        db.close()


def test_first_opens_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    for round_ in range(15):
        path = tmp_path / f"round{round_}" / "db.sqlite"
        start = ctx.Barrier(6)
        procs = [ctx.Process(target=_open_and_write, args=(str(path), start, n)) for n in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 6
        db = open_wal_database(path, SCHEMA, path.parent)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 6
        db.close()
