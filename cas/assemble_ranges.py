"""How a piece ingest (:mod:`cas.assemble`) stores pieces, and those it takes from the
bytes of a committed blob.

A registry may keep a repository's own recipe of a blob, cut otherwise than the store
keeps it (``registry/server/recipes.py``): a piece push naming that blob as a base then
counts on pieces the store does not hold as pieces. At the commit they are read from the
base's bytes (the store's pieces that cover each range), checked against their BLAKE3
keys and stored as pieces of the ingest.
"""

from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING

import blake3

from .errors import StoreCorrupt
from .ingest_pieces import IngestPieces
from .meta import decode_recipe

if TYPE_CHECKING:
    from .digest import Digest
    from .meta import Location

__all__ = ["PieceRanges"]


class PieceRanges(IngestPieces):
    """The part of :class:`~cas.assemble.PieceIngest` that stores pieces and checkpoints,
    pieces read from committed blobs among them; the ingest sets these attributes."""

    offset: int  # bytes received
    _pack: tuple[str, int] | None  # the pack to reopen, and its size

    def _store_checkpointed(self, pieces: list[memoryview] | list[bytes], received: int = 0) -> None:
        """Store ``pieces`` (``received`` more bytes came from the client) and checkpoint,
        the pack open only meanwhile: between calls the ingest holds no writer (and no
        buffers), so an idle upload session costs nothing but its rows."""
        if self._writer is None and self._pack is not None:
            self._writer = self._core.packs.open_append(*self._pack)
        try:
            self._store_pieces(pieces)
            self._recipe.clear()  # the recipe comes with the commit
            self.offset += received
            self._checkpoint_sync()
        finally:
            if self._writer is not None:
                self._pack = (self._writer.name, self._writer.size)
                self._writer.close()
                self._writer = None

    def _checkpoint_sync(self) -> None:
        if self._writer is not None:
            self._writer.sync()
        pack_size = self._writer.size if self._writer else (self._pack[1] if self._pack else 0)
        self._core.meta.checkpoint(self.id, self._unsaved, self.offset, self._seq, pack_size, 0)
        self._unsaved = []

    def _store_ranges(self, cut: dict[bytes, tuple[Digest, int, int]]) -> dict[bytes, Location]:
        """Store the pieces ``cut`` names (key: the committed blob, offset and length of
        its bytes), read from that blob's pieces and checked against their keys, as
        pieces of this ingest (``offset``, the bytes received, stays); their locations.
        A piece whose blob is gone is left out."""
        by_blob: dict[str, list[tuple[bytes, int, int]]] = {}
        for key, (blob, offset, length) in cut.items():
            by_blob.setdefault(str(blob), []).append((key, offset, length))
        pieces: list[bytes] = []
        for digest, wanted in by_blob.items():
            for key, offset, data in self._read_ranges(digest, wanted):
                if blake3.blake3(data).digest() != key:
                    raise StoreCorrupt(f"bytes {offset}..{offset + len(data)} of blob {digest} "
                                       f"do not hash to piece {key.hex()}")
                pieces.append(data)
        if not pieces:
            return {}
        self._store_checkpointed(pieces)
        stored = {k for k in cut if k in self._new or k in self._held}
        out = {k: self._new[k] for k in stored if k in self._new}
        held = stored - out.keys()
        if held:
            out.update(self._core.meta.locations(held))
        return out

    def _read_ranges(self, digest: str, wanted: list[tuple[bytes, int, int]]
                     ) -> list[tuple[bytes, int, bytes]]:
        """``(key, offset, bytes)`` of each wanted ``(key, offset, length)`` range of
        committed blob ``digest`` (its recipe decoded and its pieces looked up once);
        none when the blob, or a piece of it, is not (any more) in the store."""
        row = self._core.meta.blob(digest)
        if row is None:
            return []
        entries = decode_recipe(row[1])
        starts = list(itertools.accumulate((n for _, n in entries), initial=0))
        spans: list[tuple[bytes, int, int, list[tuple[bytes, int, int]]]] = []
        for key, offset, length in wanted:
            end = offset + length
            if offset < 0 or end > starts[-1]:
                return []
            first = bisect.bisect_right(starts, offset) - 1
            last = bisect.bisect_left(starts, end) - 1
            spans.append((key, offset, end, [(entries[i][0], starts[i], entries[i][1])
                                             for i in range(first, last + 1)]))
        locs = self._core.meta.locations(k for *_, covering in spans for k, _, _ in covering)
        out = []
        for key, offset, end, covering in spans:
            data = bytearray()
            for piece, at, n in covering:
                loc = locs.get(piece)
                if loc is None:
                    return []
                data += self._core.load(loc)[max(offset, at) - at : min(end, at + n) - at]
            out.append((key, offset, bytes(data)))
        return out
