"""How a piece ingest (:mod:`cas.assemble`) stores pieces, and those it takes from the
bytes of a committed blob.

A registry may keep a repository's own recipe of a blob, cut otherwise than the store
keeps it (``registry/server/recipes.py``): a piece push naming that blob as a base then
counts on pieces the store does not hold as pieces. At the commit they are read from the
base's bytes (the store's pieces that cover each range), checked against their BLAKE3
keys and stored as pieces of the ingest.
"""

from __future__ import annotations

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
        meta = self._core.meta
        pieces: list[bytes] = []
        for key, (digest, offset, length) in cut.items():
            data = self._read_range(str(digest), offset, length)
            if data is None:
                continue
            if blake3.blake3(data).digest() != key:
                raise StoreCorrupt(f"bytes {offset}..{offset + length} of blob {digest} do not "
                                   f"hash to piece {key.hex()}")
            pieces.append(data)
        if not pieces:
            return {}
        self._store_checkpointed(pieces)
        stored = {k for k in cut if k in self._new or k in self._held}
        out = {k: self._new[k] for k in stored if k in self._new}
        held = stored - out.keys()
        if held:
            out.update(meta.locations(held))
        return out

    def _read_range(self, digest: str, offset: int, length: int) -> bytes | None:
        """Bytes ``offset..offset+length`` of committed blob ``digest``, or None when it
        is not (any more) in the store."""
        row = self._core.meta.blob(digest)
        if row is None:
            return None
        entries, pos, spans = decode_recipe(row[1]), 0, []
        end = offset + length
        for key, n in entries:
            if pos < end and pos + n > offset:
                spans.append((key, pos, n))
            pos += n
        if pos < end:
            return None
        locs = self._core.meta.locations(k for k, _, _ in spans)
        out = bytearray()
        for key, at, n in spans:
            loc = locs.get(key)
            if loc is None:
                return None
            data = self._core.load(loc)
            out += data[max(offset, at) - at : min(end, at + n) - at]
        return bytes(out)

