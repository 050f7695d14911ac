"""Ingest: how the pieces cut from an ingest's bytes are stored.

Each piece is keyed (BLAKE3); pieces the store already has are held, not written again
(one metadata lookup per batch); new ones are compressed (zstd, where it saves 5 %)
and either kept inline in the metadata (when at most :data:`INLINE_MAX` bytes) or
appended to the ingest's pack, all of one batch in one system call.

:class:`IngestPieces` is this part of :class:`~cas.ingest.Ingest` (its base class); its
methods run on worker threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import blake3
import zstandard

from .meta import CODEC_RAW, CODEC_ZSTD, Location, encode_recipe

if TYPE_CHECKING:
    from .chunker import Cutter
    from .core import StoreCore
    from .packs import PackWriter

__all__ = ["INLINE_MAX", "IngestPieces"]

# Pieces this small (after compression) live in the metadata database, not in packs:
# manifests and configs then cost no file at all.
INLINE_MAX = 16 << 10
_PROBE = 16 << 10


class IngestPieces:
    """The piece store of an :class:`~cas.ingest.Ingest`, which sets these attributes."""

    id: str
    _core: StoreCore
    _cutter: Cutter
    _seq: int  # pieces cut so far
    _recipe: list[tuple[bytes, int]]
    _new: dict[bytes, Location]  # pieces this ingest wrote
    _held: set[bytes]  # committed pieces it reuses
    _unsaved: list[tuple[int, bytes, int, Location | None]]
    _writer: PackWriter | None
    _zprobe: zstandard.ZstdCompressor | None
    _zstd: zstandard.ZstdCompressor | None

    def _commit_blob(self, digest: str, size: int, recipe: list[tuple[bytes, int]], link: str | None,
                     link_own: str | None) -> tuple[bool, tuple[tuple[str, int], ...] | None]:
        """``commit_blob``, linking ``link`` in its transaction; or ``link_own``, unless the
        store keeps the blob cut otherwise: a registry records its own cut of such a blob
        before it links it (registry/server/recipes.py), and links it then. Returns whether
        a holder was linked, and this commit's own cut when the store keeps another (also
        when another commit of the same blob, cut otherwise, came in between)."""
        meta = self._core.meta
        if link is None and link_own is not None:
            row = meta.blob(digest)
            link = link_own if row is None or row[1] == encode_recipe(recipe) else None
        created = meta.commit_blob(self.id, digest, size, recipe, self._new, link)
        return link is not None, self._own_recipe(digest, created, recipe)

    def _own_recipe(self, digest: str, created: bool, recipe: list[tuple[bytes, int]]
                    ) -> tuple[tuple[str, int], ...] | None:
        """After ``commit_blob`` (which returned ``created``): this ingest's own cut of
        the blob when the store keeps another recipe for it (``BlobInfo.own_recipe``)."""
        if created:
            return None
        row = self._core.meta.blob(digest)
        if row is None or row[1] == encode_recipe(recipe):
            return None
        return tuple((k.hex(), n) for k, n in recipe)

    def _store_pieces(self, pieces: list[memoryview] | list[bytes],
                      compressible: bool | None = None,
                      sealed: tuple[str, int] | None = None) -> None:
        """Key, dedup and store ``pieces`` in order; ``compressible`` (default: whether
        the cutter found a stream of compressed frames) says whether to try zstd.
        ``sealed``: (pack, offset) where the pieces' bytes already lie, end to end, raw
        (a checkpoint's tail): new ones are recorded there, not written again."""
        keyed = [(v, blake3.blake3(v).digest()) for v in pieces]
        first = self._seq
        unknown = [
            (first + i, k)
            for i, (_, k) in enumerate(keyed)
            if k not in self._new and k not in self._held
        ]
        found = self._core.meta.hold_existing(self.id, unknown) if unknown else {}
        # The new pieces of this batch (each once): small ones inline, the others
        # appended to the pack together, in one system call.
        if compressible is None:
            compressible = not self._cutter.compressed
        fresh: dict[bytes, Location | None] = {}  # None: to be appended to the pack
        encoded: list[tuple[bytes, int, bytes | memoryview, int]] = []
        pos = 0
        for view, key in keyed:
            pos += len(view)
            if key in found or key in self._new or key in self._held or key in fresh:
                continue
            if sealed is not None:
                at = sealed[1] + pos - len(view)
                fresh[key] = Location(key, len(view), len(view), CODEC_RAW, sealed[0], at)
                continue
            data, codec = self._encode(view, compressible)
            fresh[key] = None
            encoded.append((key, len(view), data, codec))
        # A small piece of a blob whose other pieces go to a pack (its tail, mostly) goes
        # there too: the blob stays one run of its pack (one read; in S3 one object that
        # a GET can be redirected to).
        packing = self._writer is not None or any(len(e[2]) > INLINE_MAX for e in encoded)
        packed: list[tuple[bytes, int, bytes | memoryview, int]] = []
        for key, length, data, codec in encoded:
            if len(data) <= INLINE_MAX and not packing:
                fresh[key] = Location(key, length, len(data), codec, None, 0, bytes(data))
            else:
                packed.append((key, length, data, codec))
        if packed:
            if self._writer is None:
                self._writer = self._core.new_pack(self.id)
            offsets = self._writer.append_many([data for _, _, data, _ in packed])
            for (key, length, data, codec), at in zip(packed, offsets):
                fresh[key] = Location(key, length, len(data), codec, self._writer.name, at)
        self._new.update(fresh)  # type: ignore[arg-type]  # every None was replaced
        for i, (view, key) in enumerate(keyed):
            length = len(view)
            if key in found:
                self._held.add(key)
            else:
                self._unsaved.append((first + i, key, length, self._new.get(key)))
            self._recipe.append((key, length))
        self._seq += len(keyed)

    def _encode(self, view: memoryview | bytes, compressible: bool) -> tuple[bytes | memoryview, int]:
        """The bytes to store for a piece and their codec: zstd where it saves 5 %."""
        if compressible and len(view) >= 4096:
            if self._zprobe is None or self._zstd is None:
                self._zprobe = zstandard.ZstdCompressor(level=1)
                self._zstd = zstandard.ZstdCompressor(level=3)
            probe = view[:_PROBE]
            if len(self._zprobe.compress(probe)) < 0.9 * len(probe):
                packed = self._zstd.compress(view)
                if len(packed) < 0.95 * len(view):
                    return packed, CODEC_ZSTD
        return view, CODEC_RAW
