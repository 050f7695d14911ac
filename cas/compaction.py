"""Compaction: giving back the space of dead pieces where a pack cannot free a range in
place (S3 objects are immutable; :class:`~cas.pack_s3.S3Packs`).

GC frees a dead piece's range with ``PackBackend.free``; a backend that cannot punch
holes remembers the packs it was asked to free and offers ``compact(name, live,
min_live)``, which rewrites the parts of a pack that are mostly dead while keeping every
live byte at its offset. :func:`compact_packs` gives it the live ranges.

Online-safe: the live ranges are read from one metadata snapshot taken *after* the open
ingests were listed, and packs of open ingests are left alone. A pack that no open ingest
writes only loses pieces (a new piece always goes to a new pack), so every piece that may
be read later is in the snapshot; the backend keeps each live byte readable while it
rewrites.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StoreCorrupt

if TYPE_CHECKING:
    from .core import StoreCore

__all__ = ["compact_packs"]


def compact_packs(core: StoreCore, *, full: bool = False, min_live: float = 0.5,
                  progress: Callable[[int, int], None] | None = None) -> int:
    """Compact the packs the backend was asked to free ranges of (every pack when
    ``full``); return the bytes given back. A no-op for backends that free in place.
    ``progress(done, total)`` after each pack."""
    packs = core.packs
    compact = getattr(packs, "compact", None)
    take_freed = getattr(packs, "take_freed", None)
    if compact is None or take_freed is None:
        return 0
    wanted: set[str] | None = None if full else take_freed()
    if wanted is not None and not wanted:
        return 0
    busy = {row.pack for row in core.meta.list_ingests() if row.pack is not None}
    live: dict[str, list[tuple[int, int]]] = defaultdict(list)
    with core.meta.snapshot() as snap:
        for loc, _refs in snap.iter_pieces():
            if loc.pack is not None and loc.pack not in busy and (wanted is None or loc.pack in wanted):
                live[loc.pack].append((loc.offset, loc.stored))
    freed = 0
    for done, (name, ranges) in enumerate(live.items(), 1):
        try:
            freed += int(compact(name, ranges, min_live))
        except StoreCorrupt:
            pass  # rewritten or deleted meanwhile (another GC): nothing to do here
        if progress is not None:
            progress(done, len(live))
    return freed
