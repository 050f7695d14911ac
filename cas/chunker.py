"""Cutting a byte stream into pieces, in bounded memory.

Boundaries are content-defined, so an insertion early in a blob moves only the pieces
near it (DESIGN.md, "Content addressing and dedup"):

- a stream of gzip members or zstd frames is cut at frame ends (:mod:`cas.frames`), so the
  same frame in two layers is the same piece; a frame longer than ``max_size`` is cut
  further into ``frame_piece`` pieces from its start; frames shorter than ``frame_min`` are joined with the ones after
  them until a piece holds at least ``frame_min`` bytes (zstd:chunked writes a frame per
  tar header and per file chunk: a third of its frames are under 16 KiB, each of which
  would be a piece of its own, with its key, its metadata row and its bytes inline in
  the metadata database);
- anything else is cut by FastCDC (the compiled ``pyfastcdc``, ~2 GB/s).

Boundaries only decide how much is shared: the pieces always concatenate to the exact
input. A piece cut before the end of the buffered bytes is final (a cut depends only
on the bytes since the previous one), so only the last, still-growing piece
is kept back between feeds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .buffers import POOL, copy_into
from .frames import FrameScanner, stream_kind

__all__ = ["ChunkParams", "Cutter"]


# A stream that needs more buffer than this takes a full-size one from the pool.
_SMALL = 256 << 10


@dataclass(frozen=True, slots=True)
class ChunkParams:
    """FastCDC sizes. The defaults were chosen with ``bench/`` (see bench/README.md)."""

    # pyfastcdc's pieces average about avg_size + min_size (~300 KiB here); a large
    # minimum lets it skip hashing the first half of each piece: 2.7 GB/s against
    # 1.9 GB/s for min 64 KiB / avg 256 KiB at the same mean piece size.
    min_size: int = 128 << 10
    avg_size: int = 192 << 10
    max_size: int = 1 << 20
    # A frame end is a cut only once the piece it ends holds this many bytes (at most
    # max_size: a longer frame is cut anyway). Measured with bench/formats_bench.py's
    # corpus (v2 stored anew / v2 bytes, pieces of v1 + v2): zstd:chunked 0.023 with
    # 16 KiB as with every frame a piece, in 7,962 pieces instead of 10,967 (3,343 of
    # them inline in the metadata, 24 now); 64 KiB: 4,626 pieces, but 0.026 stored anew.
    frame_min: int = 16 << 10
    # A frame longer than max_size is cut into pieces of this size (at most max_size)
    # from its start; 0: by FastCDC, as a stream that is not made of frames is. Past a
    # change inside a gzip member or zstd frame every compressed byte differs (the
    # deflate blocks and their codes, zstd's blocks shift), so a content-defined cut
    # shares nothing more, and it cost a tenth of a cold pull's CPU (plain gzip and zstd
    # layers: one frame per layer). Measured with bench/formats_bench.py's corpus (v2
    # stored anew / v2 bytes, FastCDC -> 512 KiB): plain gzip 0.502 -> 0.502, zstd 0.031
    # -> 0.030, in 1,009 pieces for v1 instead of 1,711; 1 MiB: zstd 0.040.
    frame_piece: int = 512 << 10

    def __post_init__(self) -> None:
        if not (64 <= self.min_size <= self.avg_size <= self.max_size <= 16 << 20):
            raise ValueError(
                "chunk sizes must satisfy 64 <= min <= avg <= max <= 16 MiB, "
                f"got min={self.min_size} avg={self.avg_size} max={self.max_size}"
            )
        if self.frame_min < 0:
            raise ValueError(f"frame_min must not be negative, got {self.frame_min}")
        if self.frame_piece < 0:
            raise ValueError(f"frame_piece must not be negative, got {self.frame_piece}")


def _fastcdc(params: ChunkParams) -> Any:
    """pyfastcdc's chunker for ``params``: imported when first needed (~4 ms of start-up),
    as most blobs a command stores (manifests, configs, a pull's already cut pieces) are
    one piece each and never meet it."""
    from pyfastcdc import FastCDC

    return FastCDC(avg_size=params.avg_size, min_size=params.min_size, max_size=params.max_size)


class Cutter:
    """Feed bytes in order; get back complete pieces, in order.

    Pieces are ``memoryview`` slices of the cutter's own buffer, **valid only until the
    next call** of :meth:`feed` or :meth:`finish` (copy what you keep). The buffer is
    allocated once and reused: fresh large allocations cost page faults that made a
    join-per-feed design run at a third of the speed.

    ``compressed`` is true once the stream is known to be gzip members or zstd frames:
    such pieces are not worth compressing again.

    The cut is deterministic: the same stream gives the same pieces however it is split
    into feeds. A *segment* runs between two frame ends (or is the whole stream when it is
    not made of frames); a segment up to ``max_size`` is one piece, a longer one is cut from its
    start: into ``frame_piece`` pieces inside a stream of frames, by FastCDC otherwise.
    """

    def __init__(self, params: ChunkParams = ChunkParams()) -> None:
        self.params = params
        self._cdc: Any = None  # pyfastcdc's FastCDC, made for the first long segment
        # Pieces are cut once this much has gathered: 2 MiB (with the default max_size)
        # is cut, keyed and written while it is still in the CPU's cache (4 MiB took
        # ~3 % longer to pull 10 x 50 MiB).
        self._gather = 2 * params.max_size
        # Below _gather bytes stay between feeds, and a feed adds at most _gather: the
        # buffer grows to 2 * _gather at most. It starts small (most blobs are small),
        # and once a stream outgrows _SMALL it takes a full-size buffer from the pool
        # (see cas.buffers), given back by release(). It is replaced, not resized, when
        # it grows, so views handed out earlier stay valid.
        self._buf = bytearray(64 << 10)
        self._pooled = False
        self._view = memoryview(self._buf)
        self._len = 0  # bytes in _buf
        self._start = 0  # _buf[:_start] was emitted; moved out at the next call
        self._base = 0  # absolute stream offset of _buf[_start]
        self._split = False  # the open segment is longer than max_size: CDC it
        self._scanner: FrameScanner | None = None
        self._decided = False
        self._boundaries: deque[int] = deque()
        self.compressed = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[memoryview]:
        """Take up to :attr:`max_feed` bytes; return the pieces that are now complete."""
        src = memoryview(data).cast("B")
        copy_into(self.reserve(len(src)), src)
        return self.commit(len(src))

    def reserve(self, n: int) -> memoryview:
        """Room for up to ``n`` (at most :attr:`max_feed`) more bytes: a writable view at
        the end of the buffer, to fill in place (``sock.recv_into`` writes a received
        body straight into it, with no copy); then :meth:`commit` the bytes written. Like
        every call, it ends the validity of the pieces the previous call returned."""
        if n > self.max_feed:
            raise ValueError(f"feed at most {self.max_feed} bytes at a time, got {n}")
        self._compact()
        if self._len + n > len(self._buf):
            size = max(2 * len(self._buf), self._len + n)
            if size > _SMALL:
                grown = POOL.take(2 * self._gather)
                self._pooled = True
            else:
                grown = bytearray(size)
            self._buf = grown
            view = memoryview(grown)
            copy_into(view[: self._len], self._view[: self._len])
            self._view = view
        return self._view[self._len : self._len + n]

    def commit(self, n: int) -> list[memoryview]:
        """Take the first ``n`` bytes of the view :meth:`reserve` returned; return the
        pieces that are now complete."""
        if n > len(self._buf) - self._len:
            raise ValueError(f"commit of {n} bytes, more than was reserved")
        if n:
            self._took(n)
        if self._len >= self._gather:
            return self._drain(final=False)
        return []

    def release(self) -> None:
        """Give the buffer back to the pool; the cutter (and every piece it returned)
        must not be used any more."""
        if self._pooled:
            POOL.give(self._buf)
            self._pooled = False
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._len = self._start = 0

    def suspend(self) -> int:
        """Give the buffer back, keeping the cutter's state; returns how many bytes it
        held (:meth:`held`), which the caller must keep (e.g. in a file) and hand to
        :meth:`resume` before the next call. An idle stream then holds no buffer."""
        self._compact()
        kept = self._len
        if self._pooled:
            POOL.give(self._buf)
            self._pooled = False
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._len = 0
        return kept

    def resume(self, held: bytes | bytearray | memoryview) -> None:
        """Take a buffer again and put back the bytes :meth:`suspend` reported held."""
        n = len(held)
        if 2 * n > _SMALL:
            self._buf = POOL.take(2 * self._gather)
            self._pooled = True
        else:  # small, as a fresh cutter's; reserve() grows it when a stream goes on
            self._buf = bytearray(max(64 << 10, 2 * n))
        self._view = memoryview(self._buf)
        copy_into(self._view[:n], held)
        self._len = n
        self._start = 0

    def flush(self) -> list[memoryview]:
        """Emit every piece that is already final, without waiting for a full gather."""
        self._compact()
        if not self._decided:
            return []
        return self._drain(final=False)

    def finish(self) -> list[memoryview]:
        self._compact()
        if not self._decided:
            self._decide(bytes(self._view[: self._len]))
        return self._drain(final=True)

    # -- internals

    def held(self) -> memoryview:
        """The bytes fed but not yet emitted as pieces (valid until the next call)."""
        return self._view[self._start : self._len]

    @property
    def max_feed(self) -> int:
        """The most bytes one :meth:`feed` call accepts."""
        return self._gather

    def _took(self, n: int) -> None:
        """Account for ``n`` bytes written at ``_buf[_len:]``."""
        if not self._decided:
            if self._len + n < 4:
                self._len += n
                return
            self._decide(bytes(self._view[:4]))
            if self._scanner is not None:
                self._boundaries.extend(self._scanner.feed(self._view[: self._len + n]))
        elif self._scanner is not None:
            self._boundaries.extend(self._scanner.feed(self._view[self._len : self._len + n]))
        self._len += n

    def _compact(self) -> None:
        if self._start:
            rest = self._len - self._start
            copy_into(self._view[:rest], self._view[self._start : self._len])
            self._len = rest
            self._start = 0

    def _decide(self, prefix: bytes) -> None:
        self._decided = True
        kind = stream_kind(prefix[:4])
        if kind is not None:
            self._scanner = FrameScanner(kind)
            self.compressed = True

    def _drain(self, final: bool) -> list[memoryview]:
        out: list[memoryview] = []
        view = self._view[: self._len]
        start = 0
        end_abs = self._base + self._len
        # Frame ends are hard cuts, once the piece they end is long enough; a short one
        # goes on into the next frame. Whether a frame end cuts depends only on where the
        # previous cut was, so the cut stays the same however the stream is fed.
        join = min(self.params.frame_min, self.params.max_size)
        while self._boundaries and self._boundaries[0] <= end_abs:
            end = self._boundaries.popleft() - self._base
            if not self._split and end - start < join:
                continue
            if end > start:
                self._cut(view, start, end, out, closed=True)
            # A boundary inside bytes already cut (a header found across two feeds,
            # behind a FastCDC cut of a long segment) is not one: never cut backwards.
            start = max(start, end)
        if final:
            if self._len > start:
                self._cut(view, start, self._len, out, closed=True)
            start = self._len
        elif self._split or self._len - start > self.params.max_size:
            # The open segment is (now known to be) longer than max_size: FastCDC cuts
            # it, and every cut before the last is final whatever follows, so emit them
            # however little is buffered. Waiting for max_size more bytes made when
            # pieces come out depend on how the stream was fed: a resumed ingest, fed
            # piece by piece, then failed to re-emit the pieces it had checkpointed.
            self._split = True
            start = self._cut(view, start, self._len, out, closed=False)
        self._start = start
        self._base += start
        return out

    def _cut(self, view: memoryview, start: int, end: int, out: list[memoryview],
             closed: bool) -> int:
        """Emit the pieces of view[start:end]; returns where the held-back rest starts.

        ``closed``: ``end`` ends the segment. Otherwise the last piece may still grow and
        is held back.
        """
        if closed and not self._split and end - start <= self.params.max_size:
            out.append(view[start:end])
            return end
        if closed:
            self._split = False
        fixed = min(self.params.frame_piece, self.params.max_size)
        if self.compressed and fixed:
            # Inside a compressed frame: every byte after a change differs anyway.
            spans = [(off, min(fixed, end - start - off)) for off in range(0, end - start, fixed)]
            if not closed and spans and spans[-1][1] < fixed:
                spans = spans[:-1]
        else:
            if self._cdc is None:
                self._cdc = _fastcdc(self.params)
            spans = [(c.offset, c.length) for c in self._cdc.cut_buf(view[start:end])]
            if not closed:
                spans = spans[:-1]
        pos = start
        for off, length in spans:
            out.append(view[start + off : start + off + length])
            pos = start + off + length
        return pos
