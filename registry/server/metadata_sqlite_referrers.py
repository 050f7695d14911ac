"""The referrers query of :class:`~registry.server.metadata_sqlite.SqliteMetadata` (spec
"Listing Referrers"), a page at a time.

A page is read in two queries: the order of the referrers after the cursor (digests and
sizes only), then the whole rows of those that fit the page's byte budget. Each manifest's
annotations (up to a manifest's size) are thus held for the page's referrers only, and a
page costs a few queries however many referrers come before or after it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from .metadata import ReferrerRecord, fitting

__all__ = ["ReferrerQueries"]

_AFTER = ("AND (created, digest) > (SELECT created, digest FROM manifests"
          " WHERE repo = ? AND digest = ? AND subject = ?) ")
_ROWS = 500  # digests per IN (...) query


class ReferrerQueries:
    """Mixed into ``SqliteMetadata``, which provides ``_run`` and ``_conn``."""

    _run: Callable[..., Any]
    _conn: Callable[[], sqlite3.Connection]

    async def referrers(self, repo: str, subject: str, last: str | None = None,
                        limit: int | None = None, max_bytes: int | None = None
                        ) -> list[ReferrerRecord]:
        after = () if last is None else (repo, last, subject)

        def read() -> list[tuple[Any, ...]]:
            db = self._conn()
            order = db.execute(
                "SELECT digest, size FROM manifests WHERE repo = ? AND subject = ? "
                f"{_AFTER if after else ''}ORDER BY created, digest LIMIT ?",
                (repo, subject, *after, -1 if limit is None else limit),
            ).fetchall()
            wanted = fitting(order, max_bytes)
            rows: dict[str, tuple[Any, ...]] = {}
            for i in range(0, len(wanted), _ROWS):
                part = wanted[i : i + _ROWS]
                rows.update((r[0], r) for r in db.execute(
                    "SELECT digest, media_type, size, artifact_type, annotations FROM manifests"
                    f" WHERE repo = ? AND digest IN ({','.join('?' * len(part))})", (repo, *part)))
            return [rows[d] for d in wanted if d in rows]  # (one deleted meanwhile is left out)

        return [ReferrerRecord(d, mt, size, at, json.loads(ann) if ann else None)
                for d, mt, size, at, ann in await self._run(read)]
