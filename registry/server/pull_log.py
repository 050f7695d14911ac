"""Manifest pull times for retention's "pulled within D days", without a write per GET."""

from __future__ import annotations

import time

from .metadata import RegistryMetadata

__all__ = ["PullLog"]


class PullLog:
    """Pulls noted in memory (one dict store per manifest GET) and written to the metadata
    in one transaction by :meth:`flush` (every few seconds, and at shutdown). At most
    ``max_pending`` distinct manifests wait; past that, new ones wait for the next round."""

    def __init__(self, max_pending: int = 100_000) -> None:
        self._pending: dict[tuple[str, str], float] = {}
        self._max = max_pending

    def note(self, repo: str, digest: str) -> None:
        if len(self._pending) < self._max or (repo, digest) in self._pending:
            self._pending[(repo, digest)] = time.time()

    async def flush(self, meta: RegistryMetadata) -> int:
        """Write what was noted; on failure the pulls are noted again for the next flush."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            await meta.record_pulls([(r, d, t) for (r, d), t in pending.items()])
        except BaseException:
            for key, when in pending.items():
                self._pending.setdefault(key, when)
            raise
        return len(pending)
