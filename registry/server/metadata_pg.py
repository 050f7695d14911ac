"""The registry's metadata on PostgreSQL: :class:`~registry.server.metadata.RegistryMetadata`
shared by every replica, beside the store's own tables (:mod:`cas.pg_meta`) in the same
database.

- The tables are the SQLite default's (:mod:`registry.server.metadata_sqlite`), their text
  columns sorting bytewise (``COLLATE "C"``: catalog and tag pages come out ASCIIbetical).
  The schema is versioned (component ``registry`` in ``pybuild_schema``) and migrated as
  :class:`cas.pg_db.PgDatabase` migrates it.
- Calls run on psycopg 3's asynchronous pool on the event loop: no thread, never
  blocking. Each write is one transaction holding the component's advisory lock (the
  writers of all replicas are serialised, as SQLite's file lock serialises processes);
  each read is one statement in autocommit mode and sees every commit made before it.
- :meth:`PgRegistryMetadata.generation` cannot learn of another replica's commit without
  a round trip, so it returns a new value on every call: the manifest cache revalidates
  each lookup with one query (the protocol's "cannot tell cheaply" case). A tag pushed
  through one replica is therefore read through any other at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from cas.errors import StoreClosed
from cas.meta import decode_recipe, encode_recipe
from cas.pg_db import Liveness, PgDatabase, live_connection, mapped_errors, open_async_pool, redact

from ..oci import INDEX_TYPES
from .metadata import CollectResult, ManifestRecord, ManifestsMissing, ReferrerRecord, TagRecord, fitting

__all__ = ["MIGRATIONS", "PgRegistryMetadata"]

MIGRATIONS = [
    # 1: the tables of the SQLite default
    """
    CREATE TABLE repositories(name TEXT COLLATE "C" PRIMARY KEY, created DOUBLE PRECISION NOT NULL);
    CREATE TABLE manifests(
        repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
        media_type TEXT NOT NULL, size BIGINT NOT NULL, subject TEXT COLLATE "C",
        artifact_type TEXT, annotations TEXT, created DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(repo, digest));
    CREATE INDEX manifests_subject ON manifests(repo, subject) WHERE subject IS NOT NULL;
    CREATE TABLE tags(
        repo TEXT COLLATE "C" NOT NULL, tag TEXT COLLATE "C" NOT NULL,
        digest TEXT COLLATE "C" NOT NULL, updated DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(repo, tag));
    CREATE INDEX tags_digest ON tags(repo, digest);
    CREATE TABLE proxy_tags(
        repo TEXT COLLATE "C" NOT NULL, tag TEXT COLLATE "C" NOT NULL, digest TEXT NOT NULL,
        checked DOUBLE PRECISION NOT NULL, PRIMARY KEY(repo, tag));
    CREATE TABLE uploads(
        id TEXT COLLATE "C" PRIMARY KEY, repo TEXT NOT NULL, created DOUBLE PRECISION NOT NULL);
    """,
    # 2: retention: what each manifest references, and when it was last pulled
    """
    ALTER TABLE manifests ADD COLUMN refs_known BOOLEAN NOT NULL DEFAULT FALSE;
    ALTER TABLE manifests ADD COLUMN pulled DOUBLE PRECISION;
    CREATE TABLE manifest_refs(
        repo TEXT COLLATE "C" NOT NULL, parent TEXT COLLATE "C" NOT NULL,
        child TEXT COLLATE "C" NOT NULL, PRIMARY KEY(repo, parent, child));
    CREATE INDEX manifest_refs_child ON manifest_refs(repo, child);
    """,
    # 3: a repository's own recipe of a blob the store keeps cut otherwise
    """
    CREATE TABLE blob_recipes(
        repo TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
        recipe BYTEA NOT NULL, PRIMARY KEY(repo, digest));
    """,
    # 4: pull times are recorded by every server: those not recorded before count as now
    """
    UPDATE manifests SET pulled = EXTRACT(EPOCH FROM clock_timestamp()) WHERE pulled IS NULL;
    """,
    # 5: whether a tag was ever pushed to a repository (metadata_sqlite_tagged.py says why;
    # not recorded before: one that holds a tag or a manifest counts as tagged)
    """
    ALTER TABLE repositories ADD COLUMN tagged BOOLEAN NOT NULL DEFAULT FALSE;
    UPDATE repositories r SET tagged = TRUE
    WHERE EXISTS (SELECT 1 FROM tags t WHERE t.repo = r.name)
       OR EXISTS (SELECT 1 FROM manifests m WHERE m.repo = r.name);
    """,
]

# Untagged, old enough, no remaining manifest references it, its subject (if any) gone.
_UNTAGGED = """
SELECT m.digest, m.media_type FROM manifests m
WHERE m.repo = %(repo)s AND m.created < %(before)s
  AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repo = m.repo AND t.digest = m.digest)
  AND NOT EXISTS (SELECT 1 FROM manifest_refs r
                  WHERE r.repo = m.repo AND r.child = m.digest AND r.parent != m.digest)
  AND (m.subject IS NULL OR NOT EXISTS
       (SELECT 1 FROM manifests s WHERE s.repo = m.repo AND s.digest = m.subject))
LIMIT 500
"""

_LOCK_ID = zlib.crc32(b"pybuild:registry")


class PgRegistryMetadata:
    """:class:`~registry.server.metadata.RegistryMetadata` in the PostgreSQL database at
    ``url``; open with :meth:`open` (``migrate``: bring an older or empty schema up to date
    instead of refusing to start)."""

    def __init__(self, url: str, pool: Any) -> None:
        self.url = url
        self._pool = pool
        self._fresh = itertools.count()
        self._closed = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._liveness = Liveness(url)  # a database seen down fails calls at once (503)

    @classmethod
    async def open(cls, url: str, *, migrate: bool = False, max_size: int = 16) -> PgRegistryMetadata:
        def check() -> None:  # schema version check (and migration) on the sync driver
            PgDatabase(url, "registry", MIGRATIONS, migrate=migrate, max_size=1).close()

        await asyncio.to_thread(check)
        pool = await open_async_pool(url, max_size=max_size, wait=60)
        return cls(url, pool)

    def generation(self) -> int:
        """A new value on every call: see the module docstring."""
        if self._closed:
            raise StoreClosed(f"registry metadata {redact(self.url)}")
        return next(self._fresh)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        await self._pool.close()

    @asynccontextmanager
    async def _using(self) -> AsyncIterator[None]:
        if self._closed:
            raise StoreClosed(f"registry metadata {redact(self.url)}")
        self._busy += 1
        self._idle.clear()
        try:
            # a full disk is StorageFull (507), as in cas; a lost database DatabaseUnavailable (503)
            with mapped_errors(self.url, self._liveness):
                await self._liveness.check_async()
                yield
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.set()

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[Any]:
        async with self._using(), live_connection(self._pool, self._liveness) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            yield conn

    async def _q(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._using(), live_connection(self._pool, self._liveness) as conn:
            cur = await conn.execute(sql, args)
            return list(await cur.fetchall())

    # --- repositories ---------------------------------------------------------------------
    async def ensure_repository(self, name: str) -> None:
        async with self._tx() as db:
            await db.execute("INSERT INTO repositories (name, created) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (name, time.time()))

    async def repository_exists(self, name: str) -> bool:
        return bool(await self._q("SELECT 1 FROM repositories WHERE name = %s", name))

    async def repository_tagged(self, name: str) -> bool:
        return bool(await self._q("SELECT 1 FROM repositories WHERE name = %s AND tagged", name))

    async def repositories(self, last: str | None, limit: int) -> list[str]:
        rows = await self._q("SELECT name FROM repositories WHERE name > %s ORDER BY name LIMIT %s",
                             last or "", limit)
        return [r[0] for r in rows]

    # --- manifests ------------------------------------------------------------------------
    async def put_manifest(self, record: ManifestRecord, tags: tuple[str, ...] = ()) -> None:
        now = time.time()
        annotations = json.dumps(record.annotations) if record.annotations else None
        refs = record.references
        async with self._tx() as db:
            if refs and record.media_type in INDEX_TYPES:
                cur = await db.execute("SELECT digest FROM manifests WHERE repo = %s AND digest = ANY(%s)",
                                       (record.repo, list(refs)))
                present = {r[0] for r in await cur.fetchall()}
                missing = [d for d in dict.fromkeys(refs) if d not in present and d not in record.blob_entries]
                if missing:
                    raise ManifestsMissing(missing)  # rolls the transaction back
            await db.execute("INSERT INTO repositories (name, created) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (record.repo, now))
            await db.execute(
                "INSERT INTO manifests VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (repo, digest) DO UPDATE SET media_type = EXCLUDED.media_type,"
                " size = EXCLUDED.size, subject = EXCLUDED.subject,"
                " artifact_type = EXCLUDED.artifact_type, annotations = EXCLUDED.annotations,"
                " created = EXCLUDED.created",
                (record.repo, record.digest, record.media_type, record.size, record.subject,
                 record.artifact_type, annotations, now))
            if refs is not None:
                await _record_references(db, record.repo, record.digest, refs)
            if tags:
                await db.execute("UPDATE repositories SET tagged = TRUE WHERE name = %s", (record.repo,))
            for tag in tags:
                await db.execute(
                    "INSERT INTO tags VALUES (%s, %s, %s, %s) ON CONFLICT (repo, tag)"
                    " DO UPDATE SET digest = EXCLUDED.digest, updated = EXCLUDED.updated",
                    (record.repo, tag, record.digest, now))

    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        rows = await self._q("SELECT media_type, size, subject, artifact_type, annotations"
                             " FROM manifests WHERE repo = %s AND digest = %s", repo, digest)
        if not rows:
            return None
        media_type, size, subject, artifact_type, annotations = rows[0]
        return ManifestRecord(repo, digest, media_type, size, subject, artifact_type,
                              json.loads(annotations) if annotations else None)

    async def manifests_present(self, repo: str, digests: list[str]) -> set[str]:
        if not digests:
            return set()
        rows = await self._q("SELECT digest FROM manifests WHERE repo = %s AND digest = ANY(%s)",
                             repo, list(digests))
        return {r[0] for r in rows}

    async def delete_manifest(self, repo: str, digest: str) -> list[str] | None:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM manifests WHERE repo = %s AND digest = %s",
                                   (repo, digest))
            if cur.rowcount == 0:
                return None
            await db.execute("DELETE FROM manifest_refs WHERE repo = %s AND parent = %s", (repo, digest))
            cur = await db.execute("DELETE FROM tags WHERE repo = %s AND digest = %s RETURNING tag",
                                   (repo, digest))
            return sorted(r[0] for r in await cur.fetchall())

    async def referrers(self, repo: str, subject: str, last: str | None = None,
                        limit: int | None = None, max_bytes: int | None = None
                        ) -> list[ReferrerRecord]:
        # The order first (digests and sizes), then the rows of those that fit: only the
        # page's annotations are read (metadata_sqlite_referrers.py reads them alike).
        after = (" AND (created, digest) > (SELECT created, digest FROM manifests"
                 " WHERE repo = %s AND digest = %s AND subject = %s)") if last is not None else ""
        args = (repo, last, subject) if last is not None else ()
        order = await self._q(
            f"SELECT digest, size FROM manifests WHERE repo = %s AND subject = %s{after}"
            " ORDER BY created, digest LIMIT %s", repo, subject, *args, limit)
        wanted = fitting([(d, int(n)) for d, n in order], max_bytes)
        rows = {r[0]: r for r in await self._q(
            "SELECT digest, media_type, size, artifact_type, annotations FROM manifests"
            " WHERE repo = %s AND digest = ANY(%s)", repo, wanted)} if wanted else {}
        return [ReferrerRecord(d, mt, size, at, json.loads(ann) if ann else None)
                for d, mt, size, at, ann in (rows[w] for w in wanted if w in rows)]

    # --- retention (retention.py) ---------------------------------------------------------
    async def tag_records(self, repo: str) -> list[TagRecord]:
        rows = await self._q(
            "SELECT t.tag, t.digest, t.updated, m.pulled FROM tags t LEFT JOIN manifests m"
            " ON m.repo = t.repo AND m.digest = t.digest WHERE t.repo = %s ORDER BY t.tag", repo)
        return [TagRecord(tag, digest, float(pushed), pulled) for tag, digest, pushed, pulled in rows]

    async def record_pulls(self, pulls: list[tuple[str, str, float]]) -> None:
        if not pulls:
            return
        async with self._tx() as db:
            await db.cursor().executemany(
                "UPDATE manifests SET pulled = %(when)s WHERE repo = %(repo)s AND digest = %(digest)s"
                " AND (pulled IS NULL OR pulled < %(when)s)",
                [{"repo": r, "digest": d, "when": w} for r, d, w in pulls])

    async def renew_manifest(self, repo: str, digest: str, pushed_before: float) -> float | None:
        rows = await self._q("SELECT created FROM manifests WHERE repo = %s AND digest = %s", repo, digest)
        if not rows:
            return None
        if float(rows[0][0]) >= pushed_before:
            return float(rows[0][0])  # nothing to write (a write takes the lock collect holds)
        async with self._tx() as db:  # under collect's lock: before or after a run, whole
            await db.execute("UPDATE manifests SET created = %(now)s WHERE repo = %(repo)s"
                             " AND digest = %(digest)s AND created < %(now)s",
                             {"now": time.time(), "repo": repo, "digest": digest})
            cur = await db.execute("SELECT created FROM manifests WHERE repo = %s AND digest = %s",
                                   (repo, digest))
            row = await cur.fetchone()
            return None if row is None else float(row[0])

    async def unknown_references(self, repo: str, limit: int) -> list[str]:
        rows = await self._q("SELECT digest FROM manifests WHERE repo = %s AND NOT refs_known LIMIT %s",
                             repo, limit)
        return [r[0] for r in rows]

    async def set_references(self, repo: str, digest: str, references: tuple[str, ...]) -> None:
        async with self._tx() as db:
            cur = await db.execute("SELECT 1 FROM manifests WHERE repo = %s AND digest = %s", (repo, digest))
            if await cur.fetchone():
                await _record_references(db, repo, digest, references)

    async def collect(self, repo: str, tags: list[TagRecord], untagged_before: float, *,
                      dry_run: bool = False) -> CollectResult:
        async with self._using(), live_connection(self._pool, self._liveness) as conn:
            await conn.execute("BEGIN")
            try:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                result = await _collect(conn, repo, tags, untagged_before)
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("ROLLBACK" if dry_run else "COMMIT")
            return result

    # --- tags -----------------------------------------------------------------------------
    async def resolve_tag(self, repo: str, tag: str) -> str | None:
        rows = await self._q("SELECT digest FROM tags WHERE repo = %s AND tag = %s", repo, tag)
        return rows[0][0] if rows else None

    async def tags(self, repo: str, last: str | None, limit: int) -> list[str]:
        rows = await self._q("SELECT tag FROM tags WHERE repo = %s AND tag > %s ORDER BY tag LIMIT %s",
                             repo, last or "", limit)
        return [r[0] for r in rows]

    async def delete_tag(self, repo: str, tag: str) -> bool:
        async with self._tx() as db:
            cur = await db.execute("DELETE FROM tags WHERE repo = %s AND tag = %s", (repo, tag))
            return bool(cur.rowcount > 0)

    # --- upload sessions ------------------------------------------------------------------
    async def add_upload(self, upload_id: str, repo: str) -> None:
        async with self._tx() as db:
            await db.execute("INSERT INTO uploads VALUES (%s, %s, %s)", (upload_id, repo, time.time()))

    async def upload_repository(self, upload_id: str) -> str | None:
        rows = await self._q("SELECT repo FROM uploads WHERE id = %s", upload_id)
        return rows[0][0] if rows else None

    async def remove_upload(self, upload_id: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))

    async def uploads(self) -> list[str]:
        return [r[0] for r in await self._q("SELECT id FROM uploads")]

    # --- pull-through cache ---------------------------------------------------------------
    async def proxy_tag(self, repo: str, tag: str) -> tuple[str, float] | None:
        rows = await self._q("SELECT digest, checked FROM proxy_tags WHERE repo = %s AND tag = %s",
                             repo, tag)
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    async def set_proxy_tag(self, repo: str, tag: str, digest: str, checked: float) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO proxy_tags VALUES (%s, %s, %s, %s) ON CONFLICT (repo, tag)"
                " DO UPDATE SET digest = EXCLUDED.digest, checked = EXCLUDED.checked",
                (repo, tag, digest, checked))

    # --- a repository's own recipes -------------------------------------------------------
    async def set_blob_recipe(self, repo: str, digest: str,
                              recipe: list[tuple[str, int]] | None) -> None:
        async with self._tx() as db:
            if recipe is None:
                await db.execute("DELETE FROM blob_recipes WHERE repo = %s AND digest = %s",
                                 (repo, digest))
            else:
                await db.execute(
                    "INSERT INTO blob_recipes VALUES (%s, %s, %s) ON CONFLICT (repo, digest)"
                    " DO UPDATE SET recipe = EXCLUDED.recipe",
                    (repo, digest, encode_recipe((bytes.fromhex(k), n) for k, n in recipe)))

    async def blob_recipe(self, repo: str, digest: str) -> list[tuple[str, int]] | None:
        rows = await self._q("SELECT recipe FROM blob_recipes WHERE repo = %s AND digest = %s",
                             repo, digest)
        return [(k.hex(), n) for k, n in decode_recipe(bytes(rows[0][0]))] if rows else None

    async def copy_blob_recipe(self, source: str, repo: str, digest: str) -> None:
        async with self._tx() as db:
            await db.execute("DELETE FROM blob_recipes WHERE repo = %s AND digest = %s",
                             (repo, digest))
            await db.execute("INSERT INTO blob_recipes SELECT %s, digest, recipe FROM blob_recipes"
                             " WHERE repo = %s AND digest = %s", (repo, source, digest))


async def _record_references(db: Any, repo: str, digest: str, references: tuple[str, ...]) -> None:
    await db.cursor().executemany(
        "INSERT INTO manifest_refs VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        [(repo, digest, child) for child in dict.fromkeys(references)])
    await db.execute("UPDATE manifests SET refs_known = TRUE WHERE repo = %s AND digest = %s", (repo, digest))


async def _collect(db: Any, repo: str, tags: list[TagRecord], untagged_before: float) -> CollectResult:
    dropped: list[tuple[str, str]] = []
    for t in tags:
        cur = await db.execute("DELETE FROM tags WHERE repo = %s AND tag = %s AND digest = %s AND updated = %s",
                               (repo, t.tag, t.digest, t.pushed))
        if cur.rowcount:
            dropped.append((t.tag, t.digest))
    removed: list[tuple[str, str]] = []
    while True:
        cur = await db.execute(_UNTAGGED, {"repo": repo, "before": untagged_before})
        rows = await cur.fetchall()
        if not rows:
            break
        digests = [r[0] for r in rows]
        await db.execute("DELETE FROM manifests WHERE repo = %s AND digest = ANY(%s)", (repo, digests))
        await db.execute("DELETE FROM manifest_refs WHERE repo = %s AND parent = ANY(%s)", (repo, digests))
        removed.extend((d, mt) for d, mt in rows)
    cur = await db.execute("SELECT digest FROM manifests WHERE repo = %(r)s UNION"
                           " SELECT child FROM manifest_refs WHERE repo = %(r)s", {"r": repo})
    return CollectResult(dropped, removed, {r[0] for r in await cur.fetchall()})
