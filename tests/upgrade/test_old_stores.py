"""Storage written by earlier pybuild releases, opened by this one.

``testfiles/<day>/<database>.sql`` are dumps (``sqlite3 .dump``, trimmed to a few rows)
of databases an earlier release wrote: ``2026-11-26`` before links carried their time,
before retention's columns, the pull-through cache's tags and repositories' own recipes;
``2026-12-06`` before notifications recorded their owner and before the build cache's
step keys carried step semantics 4. Each test loads a dump into the file the store opens,
opens it with this code and uses what it holds; then a file that a later release stamped
with a newer schema version is refused, untouched.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from builder.cache import BuildCache, step_key
from builder.cache import sqlite as cache_sqlite
from builder.cache.entries import EARLIER_RELEASE_MISS
from cas import Digest, StoreConfig, open_store
from cas.errors import SchemaTooNew
from cas.holders import image_holder
from cas.sqlite_db import META_SCHEMA_VERSION
from registry.client import image_store
from registry.client.image_store import ImageStore
from registry.server import metadata_sqlite, notifications_queue
from registry.server.metadata_sqlite import SqliteMetadata
from registry.server.notifications_queue import EventQueue
from registry.server.retention_policy import KeepRule

TESTFILES = Path(__file__).parent / "testfiles"
MANIFEST = "sha256:cb156df0f5c2416d37ff9f2264368e7c416454be31ce13dcf47205041012d4e4"
CONFIG = "sha256:7ef6b14e3c35ba0d0ca026dec522da83dd0e59366bfcc84f3c7c3480765f8f42"


def load(dump: str, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(dest)
    db.executescript((TESTFILES / dump).read_text())
    db.close()
    return dest


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def columns(path: Path, table: str) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    finally:
        db.close()


async def test_a_store_and_its_images_of_2026_11_26(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    load("2026-11-26/meta.sql", root / "meta.db")
    load("2026-11-26/images.sql", root / "images.db")
    assert "linked" not in columns(root / "meta.db", "links")
    async with await open_store(StoreConfig(root)) as store:
        assert "linked" in columns(root / "meta.db", "links")
        assert user_version(root / "meta.db") == META_SCHEMA_VERSION
        ref = "127.0.0.1:5701/app:v1"
        assert await store.is_linked(image_holder(ref), Digest.parse(MANIFEST))
        images = await ImageStore.open(root, store=store)
        try:
            assert [(i.ref, str(i.digest)) for i in await images.list()] == [(ref, MANIFEST)]
            manifest, config = await images.get(ref)
            assert str(manifest.config.digest) == CONFIG
            assert config.config is not None and config.config.cmd == ("cat", "/a.txt")
        finally:
            await images.close()
        # the old links count as made long ago: a stale-link sweep may take them, a new
        # link is newer than any of them
        await store.link("image:new", Digest.parse(MANIFEST))
        assert await store.unlink_stale("image:new", [Digest.parse(MANIFEST)], 3600.0) == []
        report = await store.fsck()
        assert report.ok and report.blobs_checked == 4, report
    assert user_version(root / "images.db") == image_store.SCHEMA_VERSION


async def test_a_registry_database_of_2026_11_26(tmp_path: Path) -> None:
    path = load("2026-11-26/registry.sql", tmp_path / "registry.db")
    started = time.time()
    meta = await SqliteMetadata.open(path)
    try:
        assert await meta.tags("app", None, 100) == ["v1", "v2"]
        assert await meta.resolve_tag("other", "latest") == MANIFEST
        assert await meta.repositories(None, 100) == ["app", "other"]
        assert await meta.upload_repository("77e02b75ef21521ff4a99840a75b38fc") == "app"
        # retention finds the manifests whose references were never recorded
        assert sorted(await meta.unknown_references("app", 10)) == [MANIFEST]
        await meta.set_references("app", MANIFEST, (CONFIG,))
        assert await meta.unknown_references("app", 10) == []
        # that release recorded no pulls: pull times start at the upgrade, so a policy
        # keeping what was pulled within 30 days keeps these tags for now
        records = await meta.tag_records("app")
        assert [r.tag for r in records] == ["v1", "v2"]
        assert all(r.pulled is not None and r.pulled >= started for r in records)
        assert KeepRule(pulled_within=30 * 86400).keeps(records, time.time()) == {"v1", "v2"}
        assert await meta.proxy_tag("app", "v1") is None
        assert await meta.blob_recipe("app", CONFIG) is None
    finally:
        await meta.close()
    assert {"refs_known", "pulled"} <= columns(path, "manifests")
    assert user_version(path) == metadata_sqlite.SCHEMA_VERSION


async def test_a_registry_database_from_before_tagged_repositories(tmp_path: Path) -> None:
    # Whether a repository was ever tagged was not recorded: one that holds a tag or a
    # manifest counts as tagged (tags/list keeps answering it), one with only blobs not.
    path = load("2026-11-26/registry.sql", tmp_path / "registry.db")
    db = sqlite3.connect(path)
    db.execute("INSERT INTO repositories VALUES ('blobs', 1), ('untagged', 1)")
    db.execute("INSERT INTO manifests SELECT 'untagged', digest, media_type, size, subject,"
               " artifact_type, annotations, created FROM manifests WHERE repo = 'app'")
    db.commit()
    db.close()
    assert "tagged" not in columns(path, "repositories")
    meta = await SqliteMetadata.open(path)
    try:
        assert [await meta.repository_tagged(r) for r in ("app", "other", "untagged", "blobs")] == [
            True, True, True, False]
        await meta.ensure_repository("new")
        assert not await meta.repository_tagged("new")
    finally:
        await meta.close()
    assert "tagged" in columns(path, "repositories")
    assert user_version(path) == metadata_sqlite.SCHEMA_VERSION


async def test_a_registry_database_whose_pulls_were_recorded_only_with_retention(
        tmp_path: Path) -> None:
    # Schema version 1 had the `pulled` column, but only a server configured for
    # retention filled it: a NULL there may be an image pulled every day.
    path = load("2026-11-26/registry.sql", tmp_path / "registry.db")
    meta = await SqliteMetadata.open(path)
    await meta.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE manifests SET pulled = NULL WHERE digest = ?", (MANIFEST,))
    db.execute("UPDATE manifests SET pulled = 1000 WHERE digest != ?", (MANIFEST,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    started = time.time()
    meta = await SqliteMetadata.open(path)
    try:
        pulled = {r.tag: r.pulled for r in await meta.tag_records("app")}
    finally:
        await meta.close()
    by_digest = dict(sqlite3.connect(path).execute("SELECT digest, pulled FROM manifests"))
    assert by_digest[MANIFEST] >= started  # unknown: counts as pulled at the upgrade
    assert all(t == 1000 for d, t in by_digest.items() if d != MANIFEST)  # recorded: kept
    assert all(t is not None for t in pulled.values())
    assert user_version(path) == metadata_sqlite.SCHEMA_VERSION == 3


def test_a_build_cache_of_2026_12_06(tmp_path: Path) -> None:
    """Its steps were keyed with step semantics 3: they miss, and --explain says why."""
    cache = BuildCache(load("2026-12-06/cache.sql", tmp_path / "cache.db"))
    try:
        db = sqlite3.connect(cache.path)
        key, parent, instruction, inputs = db.execute(
            "SELECT key, parent, instruction, inputs FROM steps WHERE instruction LIKE "
            "'%\"RUN\"%'").fetchone()
        db.close()
        assert cache.lookup(key) is not None  # the entry is read as it is
        now = step_key(parent, instruction, json.loads(inputs))
        assert now != key and cache.lookup(now) is None
        assert cache.explain(parent, instruction, json.loads(inputs)) == EARLIER_RELEASE_MISS
        assert cache.prune_steps(None)
    finally:
        cache.close()
    assert user_version(cache.path) == cache_sqlite.SCHEMA_VERSION


def test_undelivered_events_of_2026_12_06(tmp_path: Path) -> None:
    path = load("2026-12-06/events.sql", tmp_path / "events.db")
    queue = EventQueue(path, "new-owner")
    try:
        assert queue.adopt() == 3
        assert queue.counts() == {"ci": 3}
        seq, body = queue.head("ci") or (0, "")
        assert seq == 1 and '"action":"push"' in body
    finally:
        queue.close()
    assert user_version(path) == notifications_queue.SCHEMA_VERSION


def _stamp_newer(path: Path, version: int) -> list[str]:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version + 1}")
    db.close()
    return _contents(path)


def _contents(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


async def _open_meta(path: Path) -> None:
    meta = await SqliteMetadata.open(path)
    await meta.close()


async def _open_store(path: Path) -> None:
    async with await open_store(StoreConfig(path.parent)):
        pass


async def _open_images(path: Path) -> None:
    images = await ImageStore.open(path.parent)
    await images.close()


async def _open_cache(path: Path) -> None:
    BuildCache(path).close()


async def _open_events(path: Path) -> None:
    EventQueue(path, "x").close()


OPENERS: dict[str, tuple[str, str, int, Callable[[Path], Awaitable[None]]]] = {
    "meta.db": ("2026-11-26/meta.sql", "meta.db", META_SCHEMA_VERSION, _open_store),
    "images.db": ("2026-11-26/images.sql", "images.db", image_store.SCHEMA_VERSION, _open_images),
    "registry.db": ("2026-11-26/registry.sql", "registry.db", metadata_sqlite.SCHEMA_VERSION,
                    _open_meta),
    "cache.db": ("2026-12-06/cache.sql", "cache.db", cache_sqlite.SCHEMA_VERSION, _open_cache),
    "events.db": ("2026-12-06/events.sql", "events.db", notifications_queue.SCHEMA_VERSION,
                  _open_events),
}


@pytest.mark.parametrize("name", sorted(OPENERS))
async def test_a_database_of_a_later_release_is_refused_untouched(tmp_path: Path, name: str) -> None:
    dump, filename, version, opener = OPENERS[name]
    path = load(dump, tmp_path / "storage" / filename)
    before = _stamp_newer(path, version)
    with pytest.raises(SchemaTooNew) as info:
        await opener(path)
    text = str(info.value)
    assert str(path) in text and "newer pybuild" in text and "upgrade pybuild" in text
    assert f"schema version {version + 1}" in text
    assert _contents(path) == before  # no table made or changed (WAL mode aside)
    assert user_version(path) == version + 1
