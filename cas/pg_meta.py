"""The store's metadata on PostgreSQL: :class:`~cas.meta.Metadata` for several processes
and machines (registry replicas) sharing one store.

Same tables and meaning as the SQLite default (drawn in :mod:`cas.sqlite_db`); the
transactions and the schema versions are :class:`cas.pg_db.PgDatabase`'s. Text columns
sort bytewise (``COLLATE "C"``), as SQLite sorts, so listings come out in the same order."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from .errors import StoreCorrupt
from .holders import ingest_holder
from .meta import IngestRow, Location, decode_recipe, encode_recipe, missing_piece
from .pg_db import PgDatabase, SnapshotConnection

__all__ = ["MIGRATIONS", "PgMetadata"]

MIGRATIONS = [
    # 1: the tables of cas.sqlite_db's SCHEMA
    """
    CREATE TABLE pieces(
        key BYTEA PRIMARY KEY, length BIGINT NOT NULL, stored BIGINT NOT NULL,
        codec INTEGER NOT NULL, pack TEXT COLLATE "C", "offset" BIGINT, data BYTEA,
        refs BIGINT NOT NULL);
    CREATE INDEX pieces_dead ON pieces(key) WHERE refs <= 0;
    CREATE TABLE blobs(
        digest TEXT COLLATE "C" PRIMARY KEY, size BIGINT NOT NULL, recipe BYTEA NOT NULL,
        created DOUBLE PRECISION NOT NULL);
    CREATE INDEX blobs_created ON blobs(created);
    CREATE TABLE links(
        holder TEXT COLLATE "C" NOT NULL, digest TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY(holder, digest));
    CREATE INDEX links_digest ON links(digest);
    CREATE TABLE ingests(
        id TEXT COLLATE "C" PRIMARY KEY, algorithm TEXT NOT NULL, "offset" BIGINT NOT NULL,
        npieces BIGINT NOT NULL, pack TEXT COLLATE "C", pack_size BIGINT NOT NULL,
        tail_len BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL);
    CREATE INDEX ingests_pack ON ingests(pack);
    CREATE TABLE ingest_pieces(
        ingest TEXT COLLATE "C" NOT NULL, seq BIGINT NOT NULL, key BYTEA NOT NULL,
        length BIGINT NOT NULL, stored BIGINT, codec INTEGER, pack TEXT COLLATE "C",
        "offset" BIGINT, data BYTEA, PRIMARY KEY(ingest, seq));
    CREATE INDEX ingest_pieces_key ON ingest_pieces(key);
    CREATE TABLE packs(
        name TEXT COLLATE "C" PRIMARY KEY, live BIGINT NOT NULL,
        created DOUBLE PRECISION NOT NULL);
    CREATE TABLE trash(
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, pack TEXT NOT NULL,
        "offset" BIGINT, length BIGINT);
    """,
    # 2: when each link was last made (Metadata.unlink_stale); links made before count as old
    "ALTER TABLE links ADD COLUMN linked DOUBLE PRECISION NOT NULL DEFAULT 0",
    # 3: what replicas with local storage directories of their own share: each open
    # ingest's tail (the bytes its cutter held back at its last checkpoint, at most one
    # piece: ChunkParams.max_size), gone with the ingest; and where the packs live
    """
    CREATE TABLE ingest_tails(
        ingest TEXT COLLATE "C" PRIMARY KEY REFERENCES ingests(id) ON DELETE CASCADE,
        "offset" BIGINT NOT NULL, data BYTEA NOT NULL);
    CREATE TABLE settings(name TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
    """,
]

# A link made again is a fresh link: its time moves (see Metadata.unlink_stale).
_LINK = ("INSERT INTO links(holder, digest, linked) VALUES (%s, %s, %s)"
         " ON CONFLICT (holder, digest) DO UPDATE SET linked = EXCLUDED.linked")

_INGEST_COLS = 'id, algorithm, "offset", npieces, pack, pack_size, tail_len, created, updated'
_PIECE_COLS = 'key, length, stored, codec, pack, "offset", data'


def _loc(row: tuple[Any, ...]) -> Location:
    key, length, stored, codec, pack, offset, data = row[:7]
    return Location(bytes(key), length, stored, codec, pack, offset,
                    None if data is None else bytes(data))


class PgMetadata:
    """:class:`~cas.meta.Metadata` in the PostgreSQL database at ``url`` (a libpq URI).
    ``migrate``: bring an older (or empty) schema up to date first, instead of refusing."""

    def __init__(self, url: str, *, migrate: bool = False) -> None:
        self._db = PgDatabase(url, "cas", MIGRATIONS, migrate=migrate)
        self.url = url

    def close(self) -> None:
        self._db.close()

    # -- ingests ----------------------------------------------------------------------

    def create_ingest(self, ingest_id: str, algorithm: str) -> IngestRow:
        now = time.time()
        with self._db.tx() as db:
            db.execute(f"INSERT INTO ingests({_INGEST_COLS}) VALUES (%s, %s, 0, 0, NULL, 0, 0, %s, %s)",
                       (ingest_id, algorithm, now, now))
        return IngestRow(ingest_id, algorithm, 0, 0, None, 0, 0, now, now)

    def get_ingest(self, ingest_id: str) -> IngestRow | None:
        rows = self._db.q(f"SELECT {_INGEST_COLS} FROM ingests WHERE id = %s", (ingest_id,))
        return IngestRow(*rows[0]) if rows else None

    def list_ingests(self) -> list[IngestRow]:
        return [IngestRow(*r) for r in self._db.q(f"SELECT {_INGEST_COLS} FROM ingests ORDER BY created")]

    def set_ingest_pack(self, ingest_id: str, pack: str) -> None:
        with self._db.tx() as db:
            db.execute("INSERT INTO packs(name, live, created) VALUES (%s, 0, %s)", (pack, time.time()))
            db.execute("UPDATE ingests SET pack = %s WHERE id = %s", (pack, ingest_id))

    def hold_existing(self, ingest_id: str, entries: list[tuple[int, bytes]], *,
                      expected: bool = False) -> dict[bytes, Location]:
        known = list({k for _, k in entries})
        if not expected:
            with self._db.reading() as reader:
                known = list(self._locations(reader, known))
        if not known:
            return {}  # none is known: nothing to hold, no write transaction
        with self._db.tx() as db:
            found = self._locations(db, known)  # GC may have taken one since
            db.cursor().executemany(
                "INSERT INTO ingest_pieces(ingest, seq, key, length) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (ingest, seq) DO UPDATE SET key = EXCLUDED.key,"
                " length = EXCLUDED.length, stored = NULL, codec = NULL, pack = NULL,"
                ' "offset" = NULL, data = NULL',
                [(ingest_id, seq, k, found[k].length) for seq, k in entries if k in found],
            )
        return found

    def checkpoint(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                   offset: int, npieces: int, pack_size: int, tail_len: int) -> None:
        with self._db.tx() as db:
            self._checkpoint(db, ingest_id, rows, offset, npieces, pack_size, tail_len)

    def checkpoint_with_tail(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                             offset: int, npieces: int, pack_size: int, tail: bytes) -> None:
        """:meth:`checkpoint`, and the ingest's tail (the bytes its cutter holds back at
        ``offset``) kept in the database in the same transaction, in place of the one
        before: a replica with a storage directory of its own resumes from it."""
        with self._db.tx() as db:
            self._checkpoint(db, ingest_id, rows, offset, npieces, pack_size, len(tail))
            db.execute('INSERT INTO ingest_tails(ingest, "offset", data) VALUES (%s, %s, %s)'
                       ' ON CONFLICT (ingest) DO UPDATE SET "offset" = EXCLUDED."offset",'
                       " data = EXCLUDED.data", (ingest_id, offset, tail))

    def ingest_tail(self, ingest_id: str, offset: int) -> bytes | None:
        """The tail :meth:`checkpoint_with_tail` kept for the ingest's checkpoint at
        ``offset``; None when there is none (no such checkpoint, or a later one since)."""
        rows = self._db.q('SELECT data FROM ingest_tails WHERE ingest = %s AND "offset" = %s',
                          (ingest_id, offset))
        return bytes(rows[0][0]) if rows else None

    def setting(self, name: str) -> str | None:
        """A store-wide setting every replica reads (e.g. where the packs live), or None."""
        rows = self._db.q("SELECT value FROM settings WHERE name = %s", (name,))
        return str(rows[0][0]) if rows else None

    def set_setting_once(self, name: str, value: str, *, replace: bool = False) -> str:
        """Record ``value`` unless the setting already has one (``replace``: in any case);
        return the value recorded (the first writer's, of concurrent ones)."""
        with self._db.tx() as db:
            db.execute("INSERT INTO settings(name, value) VALUES (%s, %s) ON CONFLICT (name) "
                       + ("DO UPDATE SET value = EXCLUDED.value" if replace else "DO NOTHING"), (name, value))
            row = db.execute("SELECT value FROM settings WHERE name = %s", (name,)).fetchone()
        return str(row[0])

    @staticmethod
    def _checkpoint(db: Any, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                    offset: int, npieces: int, pack_size: int, tail_len: int) -> None:
        db.cursor().executemany(
            f"INSERT INTO ingest_pieces(ingest, seq, {_PIECE_COLS}) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (ingest, seq) DO UPDATE SET"
            " key = EXCLUDED.key, length = EXCLUDED.length, stored = EXCLUDED.stored,"
            ' codec = EXCLUDED.codec, pack = EXCLUDED.pack, "offset" = EXCLUDED."offset",'
            " data = EXCLUDED.data",
            [(ingest_id, seq, key, length)
             + ((loc.stored, loc.codec, loc.pack, loc.offset, loc.data) if loc else (None,) * 5)
             for seq, key, length, loc in rows],
        )
        db.execute('UPDATE ingests SET "offset" = %s, npieces = %s, pack_size = %s,'
                   " tail_len = %s, updated = %s WHERE id = %s",
                   (offset, npieces, pack_size, tail_len, time.time(), ingest_id))

    def ingest_recipe(self, ingest_id: str) -> list[tuple[int, Location]]:
        rows = self._db.q(
            f"SELECT seq, {_PIECE_COLS} FROM ingest_pieces WHERE ingest = %s AND seq <"
            " (SELECT npieces FROM ingests WHERE id = %s) ORDER BY seq", (ingest_id, ingest_id))
        out = []
        for seq, key, length, stored, *rest in rows:
            if stored is None:  # a held committed piece: located with locations()
                out.append((seq, Location(bytes(key), length, -1, -1, None, -1)))
            else:
                out.append((seq, _loc((key, length, stored, *rest))))
        return out

    def rewind_ingest(self, ingest_id: str) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM ingest_pieces WHERE ingest = %s AND seq >="
                       " (SELECT npieces FROM ingests WHERE id = %s)", (ingest_id, ingest_id))

    def drop_ingest(self, ingest_id: str) -> None:
        with self._db.tx() as db:
            row = db.execute("SELECT pack FROM ingests WHERE id = %s", (ingest_id,)).fetchone()
            db.execute("DELETE FROM ingest_pieces WHERE ingest = %s", (ingest_id,))
            db.execute("DELETE FROM ingests WHERE id = %s", (ingest_id,))
            db.execute("DELETE FROM links WHERE holder = %s", (ingest_holder(ingest_id),))
            if row and row[0]:
                self._trash_pack_if_dead(db, row[0])

    @staticmethod
    def _trash_pack_if_dead(db: Any, pack: str) -> None:
        live = db.execute("SELECT live FROM packs WHERE name = %s", (pack,)).fetchone()
        if live is not None and live[0] <= 0:
            db.execute("DELETE FROM packs WHERE name = %s", (pack,))
            db.execute('INSERT INTO trash(pack, "offset", length) VALUES (%s, NULL, NULL)', (pack,))

    def commit_blob(self, ingest_id: str | None, digest: str, size: int,
                    recipe: list[tuple[bytes, int]], new: dict[bytes, Location],
                    link: str | None) -> bool:
        with self._db.tx() as db:
            exists = db.execute("SELECT 1 FROM blobs WHERE digest = %s", (digest,)).fetchone()
            pack = None
            if ingest_id is not None:
                row = db.execute("SELECT pack FROM ingests WHERE id = %s", (ingest_id,)).fetchone()
                pack = row[0] if row else None
            if not exists:
                locs = list(new.values())
                taken = set(self._locations(db, [loc.key for loc in locs]))
                fresh = [loc for loc in locs if loc.key not in taken]
                cur = db.cursor()
                # A fresh piece starts with this blob's references; only the pieces that
                # were there before are counted up.
                counts = Counter(k for k, _ in recipe)
                cur.executemany(
                    f"INSERT INTO pieces({_PIECE_COLS}, refs) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(loc.key, loc.length, loc.stored, loc.codec, loc.pack, loc.offset, loc.data,
                      counts.pop(loc.key, 0))
                     for loc in fresh])
                cur.executemany(
                    'INSERT INTO trash(pack, "offset", length) VALUES (%s, %s, %s)',
                    [(loc.pack, loc.offset, loc.stored)
                     for loc in locs if loc.key in taken and loc.pack is not None])
                live: Counter[str] = Counter()
                for loc in fresh:
                    if loc.pack is not None:
                        live[loc.pack] += loc.stored
                cur.executemany("UPDATE packs SET live = live + %s WHERE name = %s",
                                [(n, p) for p, n in live.items()])
                cur.executemany("UPDATE pieces SET refs = refs + %s WHERE key = %s",
                                [(n, k) for k, n in counts.items()])
                if counts and cur.rowcount != len(counts):  # rolls the transaction back
                    raise StoreCorrupt(missing_piece(digest, counts, set(self._locations(db, list(counts)))))
                db.execute("INSERT INTO blobs(digest, size, recipe, created) VALUES (%s, %s, %s, %s)",
                           (digest, size, encode_recipe(recipe), time.time()))
            else:  # committed again: GC's grace counts from now (see sqlite_meta)
                db.execute("UPDATE blobs SET created = %s WHERE digest = %s", (time.time(), digest))
            if link is not None:
                db.execute(_LINK, (link, digest, time.time()))
            if ingest_id is not None:
                db.execute("DELETE FROM ingest_pieces WHERE ingest = %s", (ingest_id,))
                db.execute("DELETE FROM ingests WHERE id = %s", (ingest_id,))
                db.execute("DELETE FROM links WHERE holder = %s", (ingest_holder(ingest_id),))
                if pack is not None:
                    self._trash_pack_if_dead(db, pack)
            return not exists

    # -- reads -----------------------------------------------------------------------

    def blob(self, digest: str) -> tuple[int, bytes] | None:
        rows = self._db.q("SELECT size, recipe FROM blobs WHERE digest = %s", (digest,))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    def blob_head(self, digest: str) -> tuple[int, float] | None:
        rows = self._db.q("SELECT size, created FROM blobs WHERE digest = %s", (digest,))
        return (rows[0][0], rows[0][1]) if rows else None

    def locations(self, keys: Iterable[bytes]) -> dict[bytes, Location]:
        with self._db.reading() as reader:
            return self._locations(reader, list(set(keys)))

    def holds_pieces(self) -> bool:
        return bool(self._db.q("SELECT 1 FROM pieces LIMIT 1"))

    def known_pieces(self, keys: Iterable[bytes]) -> set[bytes]:
        wanted = list(set(keys))
        out: set[bytes] = set()
        with self._db.reading() as reader:
            for i in range(0, len(wanted), 5000):
                rows = reader.execute("SELECT key FROM pieces WHERE key = ANY(%s)",
                                      (wanted[i : i + 5000],)).fetchall()
                out.update(bytes(row[0]) for row in rows)
        return out

    @staticmethod
    def _locations(db: Any, keys: list[bytes]) -> dict[bytes, Location]:
        out: dict[bytes, Location] = {}
        for i in range(0, len(keys), 5000):
            rows = db.execute(f"SELECT {_PIECE_COLS} FROM pieces WHERE key = ANY(%s)",
                              (keys[i : i + 5000],)).fetchall()
            for row in rows:
                loc = _loc(row)
                out[loc.key] = loc
        return out

    # -- links -----------------------------------------------------------------------

    def link(self, holder: str, digest: str) -> bool:
        with self._db.tx() as db:
            if not db.execute("SELECT 1 FROM blobs WHERE digest = %s", (digest,)).fetchone():
                return False
            db.execute(_LINK, (holder, digest, time.time()))
            return True

    def link_all(self, holder: str, digests: list[str]) -> list[str] | None:
        wanted = list(dict.fromkeys(digests))
        with self._db.tx() as db:
            have = {r[0] for r in db.execute("SELECT digest FROM blobs WHERE digest = ANY(%s)",
                                             (wanted,)).fetchall()}
            if len(have) < len(wanted):
                return None
            linked = {r[0] for r in db.execute(
                "SELECT digest FROM links WHERE holder = %s AND digest = ANY(%s)",
                (holder, wanted)).fetchall()}
            added = [d for d in wanted if d not in linked]
            now = time.time()
            db.cursor().executemany(_LINK, [(holder, d, now) for d in wanted])
        return added

    def unlink_stale(self, holder: str, digests: list[str], before: float) -> list[str]:
        with self._db.tx() as db:
            rows = db.execute("DELETE FROM links WHERE holder = %s AND digest = ANY(%s) AND linked < %s"
                              " RETURNING digest", (holder, list(dict.fromkeys(digests)), before)).fetchall()
        gone = {r[0] for r in rows}
        return [d for d in dict.fromkeys(digests) if d in gone]

    def unlink(self, holder: str, digest: str) -> bool:
        with self._db.tx() as db:
            cur = db.execute("DELETE FROM links WHERE holder = %s AND digest = %s", (holder, digest))
            return bool(cur.rowcount > 0)

    def is_linked(self, holder: str, digest: str) -> bool:
        return bool(self._db.q("SELECT 1 FROM links WHERE holder = %s AND digest = %s", (holder, digest)))

    def holders(self, digest: str) -> list[str]:
        return [r[0] for r in self._db.q("SELECT holder FROM links WHERE digest = %s ORDER BY holder",
                                         (digest,))]

    def linked(self, holder: str) -> list[str]:
        return [r[0] for r in self._db.q("SELECT digest FROM links WHERE holder = %s ORDER BY digest",
                                         (holder,))]

    def delete_blob(self, digest: str) -> bool:
        with self._db.tx() as db:
            return self._delete_blob(db, digest)

    @staticmethod
    def _delete_blob(db: Any, digest: str) -> bool:
        row = db.execute("SELECT recipe FROM blobs WHERE digest = %s", (digest,)).fetchone()
        if row is None:
            return False
        counts = Counter(k for k, _ in decode_recipe(bytes(row[0])))
        db.cursor().executemany("UPDATE pieces SET refs = refs - %s WHERE key = %s",
                                [(n, k) for k, n in counts.items()])
        db.execute("DELETE FROM links WHERE digest = %s", (digest,))
        db.execute("DELETE FROM blobs WHERE digest = %s", (digest,))
        return True

    # -- maintenance -----------------------------------------------------------------

    def collect_blobs(self, older_than: float, batch: int = 500) -> int:
        with self._db.tx() as db:
            digests = [r[0] for r in db.execute(
                "SELECT digest FROM blobs WHERE created < %s AND NOT EXISTS"
                " (SELECT 1 FROM links WHERE links.digest = blobs.digest) LIMIT %s",
                (older_than, batch)).fetchall()]
            for d in digests:
                self._delete_blob(db, d)
            return len(digests)

    def unlinked_since(self, since: float) -> tuple[int, int]:
        (n, size), = self._db.q(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE created >= %s AND NOT EXISTS"
            " (SELECT 1 FROM links WHERE links.digest = blobs.digest)", (since,))
        return int(n), int(size)

    def collect_pieces(self, batch: int = 5000) -> tuple[int, int]:
        with self._db.tx() as db:
            dead = db.execute(
                'SELECT key, stored, pack, "offset" FROM pieces p WHERE refs <= 0 AND NOT EXISTS'
                " (SELECT 1 FROM ingest_pieces i WHERE i.key = p.key) LIMIT %s", (batch,)).fetchall()
            db.execute("DELETE FROM pieces WHERE key = ANY(%s)", ([bytes(r[0]) for r in dead],))
            db.cursor().executemany(
                'INSERT INTO trash(pack, "offset", length) VALUES (%s, %s, %s)',
                [(pack, offset, stored) for _, stored, pack, offset in dead if pack is not None])
            live: Counter[str] = Counter()
            for _, stored, pack, _ in dead:
                if pack is not None:
                    live[pack] += stored
            for pack, n in live.items():
                db.execute("UPDATE packs SET live = live - %s WHERE name = %s", (n, pack))
                if not db.execute("SELECT 1 FROM ingests WHERE pack = %s", (pack,)).fetchone():
                    self._trash_pack_if_dead(db, pack)
            return len(dead), sum(r[1] for r in dead)

    def trash(self, limit: int = 1000) -> list[tuple[int, str, int | None, int | None]]:
        return [(r[0], r[1], r[2], r[3]) for r in self._db.q(
            'SELECT id, pack, "offset", length FROM trash ORDER BY id LIMIT %s', (limit,))]

    def forget_trash(self, ids: list[int]) -> None:
        with self._db.tx() as db:
            db.execute("DELETE FROM trash WHERE id = ANY(%s)", (list(ids),))

    def is_pack_known(self, pack: str) -> bool:
        return bool(self._db.q("SELECT 1 FROM packs WHERE name = %s", (pack,)))

    def pack_names(self) -> set[str]:
        return {r[0] for r in self._db.q("SELECT name FROM packs")}

    def pack_live(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._db.q("SELECT name, live FROM packs")}

    def stats(self) -> dict[str, int]:
        with self._db.snapshot_connection() as db:
            blobs, logical = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
            pieces, stored, raw = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(stored), 0), COALESCE(SUM(length), 0) FROM pieces"
            ).fetchone()
            counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("ingests", "links", "packs")]
        return {"blobs": blobs, "logical_bytes": int(logical), "pieces": pieces,
                "physical_bytes": int(stored), "unique_bytes": int(raw),
                "open_ingests": counts[0], "links": counts[1], "packs": counts[2]}

    def disk_bytes(self) -> int:
        return 0  # the database lives on its server, not on the store's disk

    @contextmanager
    def snapshot(self) -> Iterator[PgMetadata]:
        with self._db.snapshot_connection() as conn:
            view = PgMetadata.__new__(PgMetadata)
            view.url = self.url
            view._db = SnapshotConnection(conn)  # type: ignore[assignment]
            yield view

    def iter_blobs(self) -> Iterator[tuple[str, int, bytes]]:
        return _iter_blobs(self._db.q)

    def iter_pieces(self) -> Iterator[tuple[Location, int]]:
        return _iter_pieces(self._db.q)

    def dangling_links(self) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in self._db.q(
            "SELECT holder, digest FROM links l WHERE NOT EXISTS"
            " (SELECT 1 FROM blobs b WHERE b.digest = l.digest)")]


def _iter_blobs(q: Any) -> Iterator[tuple[str, int, bytes]]:
    last = ""
    while True:
        rows = q("SELECT digest, size, recipe FROM blobs WHERE digest > %s ORDER BY digest LIMIT 200",
                 (last,))
        if not rows:
            return
        for digest, size, recipe in rows:
            yield digest, size, bytes(recipe)
        last = rows[-1][0]


def _iter_pieces(q: Any) -> Iterator[tuple[Location, int]]:
    last = b""
    while True:
        rows = q(f"SELECT {_PIECE_COLS}, refs FROM pieces WHERE key > %s ORDER BY key LIMIT 500",
                 (last,))
        if not rows:
            return
        for row in rows:
            yield _loc(row), row[7]
        last = bytes(rows[-1][0])

