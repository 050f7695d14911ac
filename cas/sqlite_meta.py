"""The store's metadata on SQLite: the embedded default :class:`~cas.meta.Metadata`.

One database file in WAL mode, shared by every process that opens the store directory.
Every method is one transaction (``BEGIN IMMEDIATE`` for writes); lookups of pieces and
blobs go through a second connection, which in WAL mode sees the last commit without
waiting for the writer.

The schema is drawn in :mod:`cas.sqlite_db`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from .errors import StoreCorrupt
from .holders import ingest_holder
from .meta import IngestRow, Location, decode_recipe, encode_recipe, missing_piece
from .sqlite_db import SqliteDatabase, connect

__all__ = ["SqliteMetadata"]

# A link made again is a fresh link: its time moves (see Metadata.unlink_stale).
_LINK = (
    "INSERT INTO links(holder, digest, linked) VALUES (?, ?, ?)"
    " ON CONFLICT(holder, digest) DO UPDATE SET linked = excluded.linked"
)

_INGEST_COLS = "id, algorithm, offset, npieces, pack, pack_size, tail_len, created, updated"


class SqliteMetadata(SqliteDatabase):
    """:class:`~cas.meta.Metadata` on SQLite (see :class:`~cas.sqlite_db.SqliteDatabase`
    for its connections and their locks): ``SqliteMetadata(path)`` opens or creates the
    database file."""

    # -- ingests ----------------------------------------------------------------------

    def create_ingest(self, ingest_id: str, algorithm: str) -> IngestRow:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO ingests(id, algorithm, offset, npieces, pack, pack_size, tail_len,"
                " created, updated) VALUES (?, ?, 0, 0, NULL, 0, 0, ?, ?)",
                (ingest_id, algorithm, now, now),
            )
        return IngestRow(ingest_id, algorithm, 0, 0, None, 0, 0, now, now)

    def get_ingest(self, ingest_id: str) -> IngestRow | None:
        rows = self._q(f"SELECT {_INGEST_COLS} FROM ingests WHERE id = ?", (ingest_id,))
        return IngestRow(*rows[0]) if rows else None

    def list_ingests(self) -> list[IngestRow]:
        return [IngestRow(*r) for r in self._q(f"SELECT {_INGEST_COLS} FROM ingests ORDER BY created")]

    def set_ingest_pack(self, ingest_id: str, pack: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO packs(name, live, created) VALUES (?, 0, ?)", (pack, time.time()))
            db.execute("UPDATE ingests SET pack = ? WHERE id = ?", (pack, ingest_id))

    def hold_existing(self, ingest_id: str, entries: list[tuple[int, bytes]], *,
                      expected: bool = False) -> dict[bytes, Location]:
        """For (seq, key) entries: the committed pieces among them, now held by the ingest."""
        known = list({k for _, k in entries})
        if not expected:
            with self._reading() as reader:
                known = list(self._locations(reader, known))
        if not known:
            return {}  # none is known: nothing to hold, no write transaction
        with self._tx() as db:
            # Known a moment ago; still there (GC may have taken one since)? A piece that
            # became known meanwhile is just stored again (commit_blob trashes the copy).
            found = self._locations(db, known)
            rows = [
                (ingest_id, seq, k, found[k].length) for seq, k in entries if k in found
            ]
            db.executemany(
                "INSERT OR REPLACE INTO ingest_pieces(ingest, seq, key, length) VALUES (?, ?, ?, ?)",
                rows,
            )
        return found

    def checkpoint(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                   offset: int, npieces: int, pack_size: int, tail_len: int) -> None:
        """Record pieces cut since the last checkpoint: (seq, key, length, location), the
        location None for a reused committed piece."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO ingest_pieces(ingest, seq, key, length, stored, codec,"
                " pack, offset, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (ingest_id, seq, key, length)
                    + ((loc.stored, loc.codec, loc.pack, loc.offset, loc.data) if loc else (None,) * 5)
                    for seq, key, length, loc in rows
                ],
            )
            db.execute(
                "UPDATE ingests SET offset = ?, npieces = ?, pack_size = ?, tail_len = ?,"
                " updated = ? WHERE id = ?",
                (offset, npieces, pack_size, tail_len, time.time(), ingest_id),
            )

    def ingest_recipe(self, ingest_id: str) -> list[tuple[int, Location]]:
        """The checkpointed pieces of an ingest, in order (new ones with their location)."""
        rows = self._q(
            "SELECT seq, key, length, stored, codec, pack, offset, data FROM ingest_pieces"
            " WHERE ingest = ? AND seq < (SELECT npieces FROM ingests WHERE id = ?) ORDER BY seq",
            (ingest_id, ingest_id),
        )
        out = []
        for seq, key, length, stored, codec, pack, offset, data in rows:
            if stored is None:  # held existing piece: not ours to locate here
                out.append((seq, Location(key, length, -1, -1, None, -1)))
            else:
                out.append((seq, Location(key, length, stored, codec, pack, offset, data)))
        return out

    def rewind_ingest(self, ingest_id: str) -> None:
        """Forget whatever an ingest recorded after its last checkpoint (after a crash)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM ingest_pieces WHERE ingest = ? AND seq >="
                " (SELECT npieces FROM ingests WHERE id = ?)",
                (ingest_id, ingest_id),
            )

    def drop_ingest(self, ingest_id: str) -> None:
        """Abort: forget the ingest; its pack (holding only uncommitted pieces) goes to trash."""
        with self._tx() as db:
            row = db.execute("SELECT pack FROM ingests WHERE id = ?", (ingest_id,)).fetchone()
            db.execute("DELETE FROM ingest_pieces WHERE ingest = ?", (ingest_id,))
            db.execute("DELETE FROM ingests WHERE id = ?", (ingest_id,))
            db.execute("DELETE FROM links WHERE holder = ?", (ingest_holder(ingest_id),))
            if row and row[0]:
                self._trash_pack_if_dead(db, row[0])

    def _trash_pack_if_dead(self, db: sqlite3.Connection, pack: str) -> None:
        live = db.execute("SELECT live FROM packs WHERE name = ?", (pack,)).fetchone()
        if live is not None and live[0] <= 0:
            db.execute("DELETE FROM packs WHERE name = ?", (pack,))
            db.execute("INSERT INTO trash(pack, offset, length) VALUES (?, NULL, NULL)", (pack,))

    def commit_blob(self, ingest_id: str | None, digest: str, size: int,
                    recipe: list[tuple[bytes, int]], new: dict[bytes, Location],
                    link: str | None) -> bool:
        """Make a blob visible. Returns False when it already existed (then nothing of
        this ingest is kept). The ingest, if any, is closed either way."""
        with self._tx() as db:
            exists = db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone()
            pack = None
            if ingest_id is not None:
                row = db.execute("SELECT pack FROM ingests WHERE id = ?", (ingest_id,)).fetchone()
                pack = row[0] if row else None
            if not exists:
                locs = list(new.values())
                # Another ingest may have committed some of the same pieces first: those
                # copies of ours are dead space.
                taken = self._existing(db, [loc.key for loc in locs])
                fresh = [loc for loc in locs if loc.key not in taken]
                # A fresh piece starts with this blob's references; only the pieces that
                # were there before are counted up (one row written per piece, not two).
                counts = Counter(k for k, _ in recipe)
                db.executemany(
                    "INSERT INTO pieces(key, length, stored, codec, pack, offset, data, refs)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(loc.key, loc.length, loc.stored, loc.codec, loc.pack, loc.offset, loc.data,
                      counts.pop(loc.key, 0))
                     for loc in fresh],
                )
                db.executemany(
                    "INSERT INTO trash(pack, offset, length) VALUES (?, ?, ?)",
                    [(loc.pack, loc.offset, loc.stored)
                     for loc in locs if loc.key in taken and loc.pack is not None],
                )
                live: Counter[str] = Counter()
                for loc in fresh:
                    if loc.pack is not None:
                        live[loc.pack] += loc.stored
                for p, n in live.items():
                    db.execute("UPDATE packs SET live = live + ? WHERE name = ?", (n, p))
                updated = db.executemany(
                    "UPDATE pieces SET refs = refs + ? WHERE key = ?",
                    [(n, k) for k, n in counts.items()],
                ).rowcount
                if updated != len(counts):  # rolls the transaction back
                    raise StoreCorrupt(missing_piece(digest, counts, self._existing(db, list(counts))))
                db.execute(
                    "INSERT INTO blobs(digest, size, recipe, created) VALUES (?, ?, ?, ?)",
                    (digest, size, encode_recipe(recipe), time.time()),
                )
            else:
                # Committed again (pushed again, cut otherwise, perhaps): GC's grace counts
                # from now, so that it cannot take the blob before the pusher links it.
                db.execute("UPDATE blobs SET created = ? WHERE digest = ?", (time.time(), digest))
            if link is not None:
                db.execute(_LINK, (link, digest, time.time()))
            if ingest_id is not None:
                db.execute("DELETE FROM ingest_pieces WHERE ingest = ?", (ingest_id,))
                db.execute("DELETE FROM ingests WHERE id = ?", (ingest_id,))
                db.execute("DELETE FROM links WHERE holder = ?", (ingest_holder(ingest_id),))
                if pack is not None:
                    self._trash_pack_if_dead(db, pack)
            return not exists

    # -- reads -----------------------------------------------------------------------

    def blob(self, digest: str) -> tuple[int, bytes] | None:
        with self._reading() as reader:
            rows = reader.execute(
                "SELECT size, recipe FROM blobs WHERE digest = ?", (digest,)).fetchall()
        return (rows[0][0], rows[0][1]) if rows else None

    def blob_head(self, digest: str) -> tuple[int, float] | None:
        with self._reading() as reader:
            rows = reader.execute(
                "SELECT size, created FROM blobs WHERE digest = ?", (digest,)).fetchall()
        return (rows[0][0], rows[0][1]) if rows else None

    def locations(self, keys: Iterable[bytes]) -> dict[bytes, Location]:
        with self._reading() as reader:
            return self._locations(reader, list(set(keys)))

    def holds_pieces(self) -> bool:
        with self._reading() as reader:
            return reader.execute("SELECT 1 FROM pieces LIMIT 1").fetchone() is not None

    def known_pieces(self, keys: Iterable[bytes]) -> set[bytes]:
        with self._reading() as reader:
            return self._existing(reader, list(set(keys)))

    @staticmethod
    def _existing(db: sqlite3.Connection, keys: list[bytes]) -> set[bytes]:
        out: set[bytes] = set()
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            out.update(k for (k,) in db.execute(f"SELECT key FROM pieces WHERE key IN ({marks})", part))
        return out

    @staticmethod
    def _locations(db: sqlite3.Connection, keys: list[bytes]) -> dict[bytes, Location]:
        out: dict[bytes, Location] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            for key, length, stored, codec, pack, offset, data in db.execute(
                "SELECT key, length, stored, codec, pack, offset, data FROM pieces"
                f" WHERE key IN ({marks})",
                part,
            ):
                out[key] = Location(key, length, stored, codec, pack, offset, data)
        return out

    # -- links -----------------------------------------------------------------------

    def link(self, holder: str, digest: str) -> bool:
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone():
                return False
            db.execute(_LINK, (holder, digest, time.time()))
            return True

    def link_all(self, holder: str, digests: list[str]) -> list[str] | None:
        """Link every one of ``digests`` in one transaction: the ones that were not linked
        before, or None (and nothing linked) if any blob is not in the store."""
        added: list[str] = []
        now = time.time()
        try:
            with self._tx() as db:
                for digest in dict.fromkeys(digests):
                    if not db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone():
                        raise LookupError(digest)  # rolls the transaction back
                    if not db.execute(
                        "SELECT 1 FROM links WHERE holder = ? AND digest = ?", (holder, digest)
                    ).fetchone():
                        added.append(digest)
                    db.execute(_LINK, (holder, digest, now))
        except LookupError:
            return None
        return added

    def unlink(self, holder: str, digest: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM links WHERE holder = ? AND digest = ?", (holder, digest))
            return cur.rowcount > 0

    def unlink_stale(self, holder: str, digests: list[str], before: float) -> list[str]:
        """Remove the links of ``holder`` among ``digests`` last made before ``before``, in
        one transaction; the digests unlinked."""
        removed: list[str] = []
        with self._tx() as db:
            for digest in dict.fromkeys(digests):
                cur = db.execute(
                    "DELETE FROM links WHERE holder = ? AND digest = ? AND linked < ?",
                    (holder, digest, before),
                )
                if cur.rowcount:
                    removed.append(digest)
        return removed

    def is_linked(self, holder: str, digest: str) -> bool:
        # The reader connection: a registry asks this for every base of a piece-level
        # push, and should not wait behind another push's commit on the writer.
        with self._reading() as reader:
            return bool(reader.execute("SELECT 1 FROM links WHERE holder = ? AND digest = ?",
                                       (holder, digest)).fetchall())

    def holders(self, digest: str) -> list[str]:
        return [r[0] for r in self._q("SELECT holder FROM links WHERE digest = ? ORDER BY holder", (digest,))]

    def linked(self, holder: str) -> list[str]:
        return [r[0] for r in self._q("SELECT digest FROM links WHERE holder = ? ORDER BY digest", (holder,))]

    def delete_blob(self, digest: str) -> bool:
        with self._tx() as db:
            return self._delete_blob(db, digest)

    @staticmethod
    def _delete_blob(db: sqlite3.Connection, digest: str) -> bool:
        row = db.execute("SELECT recipe FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            return False
        counts = Counter(k for k, _ in decode_recipe(row[0]))
        db.executemany(
            "UPDATE pieces SET refs = refs - ? WHERE key = ?", [(n, k) for k, n in counts.items()]
        )
        db.execute("DELETE FROM links WHERE digest = ?", (digest,))
        db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
        return True

    # -- maintenance -----------------------------------------------------------------

    def collect_blobs(self, older_than: float, batch: int = 500) -> int:
        """Delete up to ``batch`` blobs that no holder links and that are older than the
        given time; returns how many."""
        with self._tx() as db:
            digests = [
                r[0]
                for r in db.execute(
                    "SELECT digest FROM blobs WHERE created < ? AND NOT EXISTS"
                    " (SELECT 1 FROM links WHERE links.digest = blobs.digest) LIMIT ?",
                    (older_than, batch),
                )
            ]
            for d in digests:
                self._delete_blob(db, d)
            return len(digests)

    def unlinked_since(self, since: float) -> tuple[int, int]:
        with self._reading() as reader:
            n, size = reader.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE created >= ? AND NOT"
                " EXISTS (SELECT 1 FROM links WHERE links.digest = blobs.digest)", (since,)
            ).fetchone()
        return int(n), int(size)

    def collect_pieces(self, batch: int = 5000) -> tuple[int, int]:
        """Delete up to ``batch`` pieces no recipe and no open ingest needs; their bytes go
        to trash. Returns (pieces, stored bytes)."""
        with self._tx() as db:
            dead = db.execute(
                "SELECT key, stored, pack, offset FROM pieces WHERE refs <= 0 AND key NOT IN"
                " (SELECT key FROM ingest_pieces) LIMIT ?",
                (batch,),
            ).fetchall()
            live: Counter[str] = Counter()
            for key, stored, pack, offset in dead:
                db.execute("DELETE FROM pieces WHERE key = ?", (key,))
                if pack is not None:
                    live[pack] += stored
                    db.execute(
                        "INSERT INTO trash(pack, offset, length) VALUES (?, ?, ?)",
                        (pack, offset, stored),
                    )
            for pack, n in live.items():
                db.execute("UPDATE packs SET live = live - ? WHERE name = ?", (n, pack))
                if not db.execute("SELECT 1 FROM ingests WHERE pack = ?", (pack,)).fetchone():
                    self._trash_pack_if_dead(db, pack)
            return len(dead), sum(r[1] for r in dead)

    def trash(self, limit: int = 1000) -> list[tuple[int, str, int | None, int | None]]:
        rows = self._q("SELECT id, pack, offset, length FROM trash ORDER BY id LIMIT ?", (limit,))
        if rows:  # the commits that put them there must outlive a power loss: see the protocol
            self.make_durable()
        return rows

    def forget_trash(self, ids: list[int]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM trash WHERE id = ?", [(i,) for i in ids])

    def is_pack_known(self, pack: str) -> bool:
        return bool(self._q("SELECT 1 FROM packs WHERE name = ?", (pack,)))

    def pack_names(self) -> set[str]:
        return {r[0] for r in self._q("SELECT name FROM packs")}

    def stats(self) -> dict[str, int]:
        with self._lock:
            self._check_open()
            db = self._db
            blobs, logical = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs").fetchone()
            pieces, stored, raw = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(stored), 0), COALESCE(SUM(length), 0) FROM pieces"
            ).fetchone()
            ingests = db.execute("SELECT COUNT(*) FROM ingests").fetchone()[0]
            links = db.execute("SELECT COUNT(*) FROM links").fetchone()[0]
            packs = db.execute("SELECT COUNT(*) FROM packs").fetchone()[0]
        return {
            "blobs": blobs,
            "logical_bytes": logical,
            "pieces": pieces,
            "physical_bytes": stored,
            "unique_bytes": raw,
            "open_ingests": ingests,
            "links": links,
            "packs": packs,
        }

    @contextmanager
    def snapshot(self) -> Iterator[SqliteMetadata]:
        """A read-only view of one consistent moment (WAL snapshot) on its own
        connection, for long readers such as fsck while the store keeps changing."""
        view = SqliteMetadata.__new__(SqliteMetadata)
        view.path = self.path
        view._lock = threading.RLock()
        view._closed = False
        self._check_open()
        view.read_only = self.read_only
        # make_durable (trash() calls it) syncs the database's own files
        view._sync_lock, view._files = self._sync_lock, self._files
        view._db = connect(self.read_only_target(), uri=True)
        view._reader, view._reader_lock = view._db, view._lock  # lookups see the snapshot too
        try:
            view._db.execute("BEGIN")
            view._db.execute("SELECT COUNT(*) FROM blobs").fetchone()  # pins the snapshot
            yield view
        finally:
            with view._lock:
                view._closed = True
                view._db.close()

    def iter_blobs(self) -> Iterator[tuple[str, int, bytes]]:
        last = ""
        while True:
            rows = self._q(
                "SELECT digest, size, recipe FROM blobs WHERE digest > ? ORDER BY digest LIMIT 200",
                (last,),
            )
            if not rows:
                return
            yield from rows
            last = rows[-1][0]

    def iter_pieces(self) -> Iterator[tuple[Location, int]]:
        last = b""
        while True:
            rows = self._q(
                "SELECT key, length, stored, codec, pack, offset, data, refs FROM pieces"
                " WHERE key > ? ORDER BY key LIMIT 500",
                (last,),
            )
            if not rows:
                return
            last = rows[-1][0]
            for key, length, stored, codec, pack, offset, data, refs in rows:
                yield Location(key, length, stored, codec, pack, offset, data), refs
            del rows  # (inline bytes) one batch held at a time, not this one and the next

    def dangling_links(self) -> list[tuple[str, str]]:
        return self._q(
            "SELECT holder, digest FROM links WHERE digest NOT IN (SELECT digest FROM blobs)"
        )

    def pack_live(self) -> dict[str, int]:
        return dict(self._q("SELECT name, live FROM packs"))
