"""A store with its metadata in PostgreSQL and its packs on disk, maintained through
another storage directory by mistake (``pybuild storage fsck|gc --storage OTHER
--database URL``): both commands refuse in one line naming the likely cause and the fix,
instead of fsck calling every piece damaged and GC freeing space in packs it cannot see
and deleting the other directory's own packs as unknown ones."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import pytest

from cas import Digest, StoreConfig
from cas.open import open_store
from testkit.postgres import PostgresServer
from tests.helpers.cli import assert_one_line_error, pybuild


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.create_database(f"elsewhere_{uuid.uuid4().hex[:12]}")


def _store_blob(config: StoreConfig, data: bytes) -> None:
    async def run() -> None:
        store = await open_store(config)
        try:
            info = await store.put(data)
            assert info.digest == Digest.of(data)
            await store.link("test", info.digest)
        finally:
            await store.close()

    asyncio.run(run())


def _packs(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in (root / "packs").rglob("*.pack")}


def _assert_refused(proc: object, other: Path) -> None:
    line = assert_one_line_error(proc,  # type: ignore[arg-type]
                                 f"{other / 'packs'}", "another storage directory", "--storage")
    assert "missing" not in line and "damaged" not in line


def test_fsck_and_gc_on_another_directory_refuse_and_change_nothing(database: str,
                                                                     tmp_path: Path) -> None:
    home, own, empty = tmp_path / "home", tmp_path / "own", tmp_path / "empty"
    _store_blob(StoreConfig.at(home, database=database, migrate=True), os.urandom(3 << 20))
    # A store of its own (SQLite) in the wrong directory: its packs are unknown to the
    # database's metadata, so a GC through it would take them for leftovers.
    _store_blob(StoreConfig.at(own), os.urandom(2 << 20))
    before = {root: _packs(root) for root in (home, own)}
    assert all(before.values())

    for other in (own, empty):
        _assert_refused(pybuild("storage", "fsck", "--storage", str(other), "--database", database),
                        other)
        _assert_refused(pybuild("storage", "gc", "--grace", "0", "--storage", str(other),
                                "--database", database), other)
    assert {root: _packs(root) for root in (home, own)} == before

    # Both stores are whole: each checks clean on its own directory.
    for args in (["--storage", str(home), "--database", database], ["--storage", str(own)]):
        fsck = pybuild("storage", "fsck", "--json", *args)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        report = json.loads(fsck.stdout)
        assert report["ok"] is True and report["blobs_checked"] == 1
