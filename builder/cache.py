"""The build cache: step key -> the layer that step produced (SQLite in the storage dir).

A step's key is ``sha256(parent key, expanded instruction, inputs)`` where ``inputs`` maps
each thing the step reads to a content hash (a copied file's path -> hash, ``env`` ->
the environment, ``user``, ``workdir``, ``args`` ...). The layer blob itself lives in the
CAS, linked by holder ``cache:<key>``; a row whose blob vanished counts as a miss.

Every stored step also records ``(parent, instruction) -> inputs``, so a miss can be
explained: :meth:`BuildCache.explain` names the inputs that differ from the last build
of the same instruction on the same parent (or says the instruction or parent changed).

It also remembers the content hash of build-context files by their ``lstat`` (table
``file_hashes``: path -> size, mtime, ctime, inode, device, mode -> hash, as BuildKit's
contenthash does), so an unchanged context costs one ``lstat`` per file, not a read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas.errors import StoreClosed, mapped_error

__all__ = ["BuildCache", "CachedLayer", "step_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    key TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    instruction TEXT NOT NULL,
    inputs TEXT NOT NULL,
    layer TEXT NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
);
CREATE INDEX IF NOT EXISTS steps_parent ON steps(parent, instruction);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,
    stat TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""


def step_key(parent: str, instruction: str, inputs: dict[str, Any]) -> str:
    """The cache key of a step (hex sha256)."""
    doc = json.dumps([parent, instruction, inputs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedLayer:
    """What a step produced: the layer blob's descriptor fields and its diff_id, and
    ``created``, when the step ran (the history time a cache hit reuses, so that a
    rebuild from the cache gives the same image; "" in entries written before)."""

    digest: str
    size: int
    diff_id: str
    media_type: str
    created: str = ""

    def to_json(self) -> str:
        doc: dict[str, Any] = {"digest": self.digest, "size": self.size,
                               "diff_id": self.diff_id, "media_type": self.media_type}
        if self.created:
            doc["created"] = self.created
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CachedLayer:
        d = json.loads(text)
        return cls(d["digest"], int(d["size"]), d["diff_id"], d["media_type"],
                   d.get("created", ""))


class BuildCache:
    """Thread-safe (one connection, one lock); calls are short, callers may use threads.

    :meth:`close` takes the lock every call holds: it waits for the call in flight, and
    a call after it raises ``cas.StoreClosed``. A full or unwritable storage directory
    is ``cas.StorageFull`` / ``cas.StorageNotWritable``, naming the path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._closed = False
        db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise mapped_error(exc, path, path.parent) from exc
        self._db = db

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, held for the block: StoreClosed after close, storage errors
        typed."""
        with self._lock:
            if self._closed:
                raise StoreClosed(f"build cache {self.path}")
            try:
                yield self._db
            except (sqlite3.Error, OSError) as exc:
                if self._db.in_transaction:  # a COMMIT that failed (a full disk)
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                mapped = mapped_error(exc, self.path, self.path.parent)
                if mapped is exc:
                    raise
                raise mapped from exc

    def get(self, key: str) -> CachedLayer | None:
        with self._using():
            row = self._db.execute("SELECT layer FROM steps WHERE key=?", (key,)).fetchone()
        return None if row is None else CachedLayer.from_json(row[0])

    def put(self, key: str, parent: str, instruction: str, inputs: dict[str, Any],
            layer: CachedLayer) -> None:
        with self._using():
            self._db.execute(
                "INSERT OR REPLACE INTO steps(key, parent, instruction, inputs, layer) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, parent, instruction, json.dumps(inputs, sort_keys=True), layer.to_json()))

    def file_hashes(self, paths: list[str]) -> dict[str, tuple[str, str]]:
        """path -> (stat signature, hash) for the paths that have an entry."""
        out: dict[str, tuple[str, str]] = {}
        with self._using():
            for i in range(0, len(paths), 500):
                batch = paths[i:i + 500]
                out.update((p, (s, h)) for p, s, h in self._db.execute(
                    "SELECT path, stat, hash FROM file_hashes WHERE path IN "
                    f"({','.join('?' * len(batch))})", batch))
        return out

    def put_file_hashes(self, rows: list[tuple[str, str, str]]) -> None:
        """Record (path, stat signature, hash) rows, replacing older ones."""
        if not rows:
            return
        with self._using():
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT OR REPLACE INTO file_hashes(path, stat, hash) VALUES (?, ?, ?)",
                    rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def prune_steps(self, before: float | None) -> list[tuple[str, CachedLayer]]:
        """Remove the step entries created before ``before`` (a Unix time; None: all);
        returns what they held."""
        where, args = ("", ()) if before is None else \
            ("WHERE created < julianday(?, 'unixepoch')", (before,))
        with self._using():
            self._db.execute("BEGIN")
            try:
                rows = self._db.execute(f"SELECT key, layer FROM steps {where}", args).fetchall()
                self._db.execute(f"DELETE FROM steps {where}", args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return [(key, CachedLayer.from_json(layer)) for key, layer in rows]

    def layers(self) -> list[CachedLayer]:
        """Every layer the remaining entries hold."""
        with self._using():
            rows = self._db.execute("SELECT layer FROM steps").fetchall()
        return [CachedLayer.from_json(r[0]) for r in rows]

    def prune_file_hashes(self, everything: bool) -> int:
        """Forget the hashes of context files that no longer exist (``everything``: all);
        returns how many."""
        with self._using():
            paths = [r[0] for r in self._db.execute("SELECT path FROM file_hashes")]
        gone = paths if everything else [p for p in paths if not os.path.lexists(p)]
        with self._using():
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM file_hashes WHERE path = ?", [(p,) for p in gone])
            self._db.execute("COMMIT")
        return len(gone)

    def forget(self, key: str) -> None:
        with self._using():
            self._db.execute("DELETE FROM steps WHERE key=?", (key,))

    def explain(self, parent: str, instruction: str, inputs: dict[str, Any]) -> str:
        """Why ``(parent, instruction, inputs)`` has no cache entry, in one sentence."""
        with self._using():
            row = self._db.execute(
                "SELECT inputs FROM steps WHERE parent=? AND instruction=? "
                "ORDER BY created DESC LIMIT 1", (parent, instruction)).fetchone()
            same_parent = self._db.execute(
                "SELECT 1 FROM steps WHERE parent=? LIMIT 1", (parent,)).fetchone()
        if row is None:
            if same_parent is not None:
                return "the instruction changed (no earlier build ran it on this parent)"
            return "the previous step changed (or this step never ran before)"
        old = json.loads(row[0])
        changed = _diff(old, inputs)
        return ("inputs changed: " + ", ".join(changed)) if changed else \
            "its cached layer is no longer stored"


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        name = f"{prefix}{k}"
        if k not in old:
            out.append(f"{name} (new)")
        elif k not in new:
            out.append(f"{name} (gone)")
        elif isinstance(old[k], dict) and isinstance(new[k], dict):
            out.extend(_diff(old[k], new[k], name + ":"))
        elif old[k] != new[k]:
            out.append(name)
    return out
