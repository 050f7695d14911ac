"""Independently compressed frames: writing them, and finding their boundaries.

pybuild writes layers as a concatenation of frames, one per content-defined chunk of
the uncompressed tar stream (DESIGN.md, "Layers as chunked frames"). Any gzip or zstd
decoder reads such a layer as one stream.

**gzip members.** Each member pybuild writes carries its own total length in the FEXTRA
header field (RFC 1952 §2.3.1.1), subfield ``SI1='P' SI2='B'``, ``LEN=4``, value the
member's total size in bytes (uint32, little endian), so a reader finds member
boundaries without inflating. BGZF members (``SI1='B' SI2='C'``, ``BSIZE``) are read the
same way. After a member without either field (written by other tools: eStargz, BGZF
without ``BC``, any concatenation of members) its deflate blocks are walked as long as
they are *stored* blocks, which record their length (RFC 1951 §3.2.4: what does not
compress, such as already compressed files, is stored), and from its first compressed
block on the next member is found by searching for a gzip header (``1f 8b 08``, then a
flag byte with its reserved bits clear), at memory speed, without inflating. The same
bytes can occur inside compressed data; a cut there is as content-defined as a real
boundary (it depends only on the bytes there), so it changes only how pieces are shared,
never the stored bytes. The search ends :data:`SEARCH_MAX` bytes after the start of the
member: a member longer than that (a single-stream gzip layer, as ``docker push``
writes) is taken to be the rest of the stream, which FastCDC cuts; searching all of it
held the GIL for 12 % of a cold pull's CPU (``re`` holds it while it searches), and
found nothing. An eStargz TOC or a zstd:chunked manifest is not needed (nor trusted):
the headers say the same.

**zstd frames.** A frame's end is found by walking its header and block headers
(RFC 8878 §3.1.1) without decompressing; skippable frames are walked by their size.
"""

from __future__ import annotations

import re
import struct
import zlib

import zstandard

__all__ = [
    "GZIP_MAGIC",
    "SEARCH_MAX",
    "ZSTD_MAGIC",
    "FrameScanner",
    "gzip_member",
    "stream_kind",
    "zstd_frame",
]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

_GZIP_EXTRA_ID = b"PB"
# ID1 ID2 CM FLG(FEXTRA) MTIME(0) XFL OS(unknown) XLEN SI1 SI2 LEN
_GZIP_HEADER = struct.Struct("<2sBBIBBH2sHI")
_GZIP_HEADER_LEN = _GZIP_HEADER.size  # 20


def gzip_member(data: bytes | memoryview, level: int = 6) -> bytes:
    """One gzip member holding ``data``, with its total length in FEXTRA ('PB').

    Deterministic: MTIME is 0, OS is 255, no file name; the same bytes and level give
    the same member on any machine. Level 0 writes deflate stored blocks directly (zlib's
    level 0 still runs its compressor's machinery, at a third of the speed), so those
    members do not even depend on the zlib version.
    """
    if level == 0:
        body = _stored_blocks(data)
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
        body = [comp.compress(data) + comp.flush()]
    total = _GZIP_HEADER_LEN + sum(len(b) for b in body) + 8
    header = _GZIP_HEADER.pack(GZIP_MAGIC, 8, 4, 0, 0, 255, 8, _GZIP_EXTRA_ID, 4, total)
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return b"".join([header, *body, trailer])


def _stored_blocks(data: bytes | memoryview) -> list[bytes | memoryview]:
    """``data`` as raw deflate stored blocks (RFC 1951 §3.2.4): BFINAL/BTYPE=00, LEN,
    NLEN, then the bytes; at most 65535 bytes per block, the last one final."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, max(len(view), 1), _MAX_STORED):
        block = view[start:start + _MAX_STORED]
        final = start + _MAX_STORED >= len(view)
        parts.append(_STORED_HEADER.pack(1 if final else 0, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
    return parts


_MAX_STORED = 0xFFFF
_STORED_HEADER = struct.Struct("<BHH")


def zstd_frame(data: bytes | memoryview, level: int = 3) -> bytes:
    """One zstd frame holding ``data`` (content size recorded, no checksum)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


# --- finding boundaries ----------------------------------------------------------------

# The start of a gzip member (RFC 1952 §2.3): ID1 ID2 CM=8, then FLG with bits 5-7 clear.
_GZIP_HEADER_RE = re.compile(rb"\x1f\x8b\x08[\x00-\x1f]")
# How far after the start of a member that records no length the next member is looked
# for. Members other tools write to be found are short: BGZF's are at most 64 KiB,
# eStargz's one per file or file chunk (4 MiB by default, compressed no larger).
SEARCH_MAX = 8 << 20

# States whose headers FrameScanner._walk reads in place.
_WALKED = frozenset({"frame", "deflate_stored", "zstd_block"})

_ZSTD_SKIPPABLE_LO = 0x184D2A50
_ZSTD_SKIPPABLE_HI = 0x184D2A5F


class FrameScanner:
    """Finds the end offsets of consecutive gzip members or zstd frames in a byte stream.

    Feed it every byte of the stream in order; :meth:`feed` returns the absolute offsets
    (from the start of the stream) at which a frame ends. Once the stream stops looking
    like frames (trailing garbage, a member too long to scan), :attr:`done` turns true and
    no further boundaries are reported; the stream is still stored exactly, only cut
    differently.
    """

    def __init__(self, kind: str) -> None:
        if kind not in ("gzip", "zstd"):
            raise ValueError(kind)
        self.kind = kind
        self.done = False
        self._pos = 0  # absolute offset of the next unread byte
        self._frame_start = 0
        self._skip = 0  # bytes still to pass over before the next header field
        self._need = 0  # header bytes wanted in _hdr before we can decide
        self._hdr = bytearray()
        self._state = "frame"  # what the bytes in _hdr will be
        self._zstd_checksum = False
        self._flg = 0  # the gzip member's FLG
        # Searching for the next member: the last bytes searched in the previous feed
        # (a header may straddle two feeds).
        self._carry = b""

    def feed(self, data: bytes | bytearray | memoryview) -> list[int]:
        if self.done:
            self._pos += len(data)
            return []
        out: list[int] = []
        mv = memoryview(data)
        i = 0
        n = len(mv)
        while i < n and not self.done:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                if self._skip == 0 and self._state == "end":
                    out.append(self._pos + i)
                    self._begin_frame(self._pos + i)
                continue
            if self._state == "search":
                i = self._search(mv, i, out)
                continue
            if not self._hdr and self._state in _WALKED:
                j = self._walk(mv, i, n, out)
                if j != i:
                    i = j
                    continue
            want = self._want()
            take = min(want - len(self._hdr), n - i)
            self._hdr += mv[i : i + take]
            i += take
            if len(self._hdr) >= want:
                self._advance(out, self._pos + i)
        self._pos += n
        return out

    def finish(self) -> list[int]:
        """Call at end of stream: a frame still open there is not a boundary."""
        self.done = True
        return []

    # -- internals

    def _begin_frame(self, at: int) -> None:
        self._frame_start = at
        self._state = "frame"
        self._hdr.clear()

    def _want(self) -> int:
        st = self._state
        if st == "frame":
            return 4 if self.kind == "zstd" else 10
        if st == "zstd_fhd":
            return 5
        if st == "zstd_rest":
            return self._need
        if st == "zstd_block":
            return 3
        if st == "zstd_skip_size":
            return 8
        if st == "gzip_xlen":
            return 12
        if st == "gzip_extra":
            return self._need
        if st == "deflate_stored":
            return 5  # BFINAL and BTYPE (byte-aligned here), LEN, NLEN
        raise AssertionError(st)

    def _advance(self, out: list[int], here: int) -> None:
        h = self._hdr
        st = self._state
        if self.kind == "zstd":
            if st == "frame":
                magic = int.from_bytes(h[:4], "little")
                if h[:4] == ZSTD_MAGIC:
                    self._state = "zstd_fhd"
                elif _ZSTD_SKIPPABLE_LO <= magic <= _ZSTD_SKIPPABLE_HI:
                    self._state = "zstd_skip_size"
                else:
                    self.done = True
                return
            if st == "zstd_skip_size":
                self._skip = int.from_bytes(h[4:8], "little")
                self._state = "end"
                if self._skip == 0:
                    out.append(here)
                    self._begin_frame(here)
                return
            if st == "zstd_fhd":
                fhd = h[4]
                if fhd & 0x08:  # reserved bit must be zero
                    self.done = True
                    return
                fcs_flag = fhd >> 6
                single = (fhd >> 5) & 1
                did = (0, 1, 2, 4)[fhd & 3]
                fcs = (single, 2, 4, 8)[fcs_flag]
                self._zstd_checksum = bool(fhd & 0x04)
                self._need = 5 + (0 if single else 1) + did + fcs
                self._state = "zstd_rest"
                if len(h) >= self._need:
                    self._advance(out, here)
                return
            if st == "zstd_rest":
                self._hdr.clear()
                self._state = "zstd_block"
                return
            if st == "zstd_block":
                bh = int.from_bytes(h[:3], "little")
                last = bh & 1
                btype = (bh >> 1) & 3
                bsize = bh >> 3
                self._hdr.clear()
                if btype == 3:
                    self.done = True
                    return
                body = 1 if btype == 1 else bsize
                if last:
                    self._skip = body + (4 if self._zstd_checksum else 0)
                    self._state = "end"
                    if self._skip == 0:
                        out.append(here)
                        self._begin_frame(here)
                else:
                    self._skip = body
                return
        else:
            if st == "frame":
                if h[:3] != b"\x1f\x8b\x08":
                    self.done = True
                    return
                self._flg = h[3]
                if h[3] & 0x04:  # FEXTRA: the length may be recorded
                    self._state = "gzip_xlen"
                    return
                self._start_deflate()
                return
            if st == "gzip_xlen":
                self._need = 12 + int.from_bytes(h[10:12], "little")
                self._state = "gzip_extra"
                if len(h) >= self._need:
                    self._advance(out, here)
                return
            if st == "gzip_extra":
                total = _gzip_recorded_length(bytes(h[12 : self._need]))
                if total is not None and total > len(h):
                    self._skip = total - len(h)
                    self._state = "end"
                    return
                self._start_deflate()
                return
            if st == "deflate_stored":
                n = int.from_bytes(h[1:3], "little")
                if h[0] & 0x06 or int.from_bytes(h[3:5], "little") != n ^ 0xFFFF:
                    self._start_search()  # a compressed block: its end is not recorded
                    return
                final = h[0] & 0x01
                self._hdr.clear()
                if final:  # BFINAL: the trailer (CRC32, ISIZE), then the next member
                    self._skip = n + 8
                    self._state = "end"
                else:
                    self._skip = n
                return
        raise AssertionError(st)

    def _walk(self, mv: memoryview, i: int, n: int, out: list[int]) -> int:
        """Walk the block headers of a zstd frame or the stored blocks of a deflate
        stream, or a frame's header, that lie whole in ``mv[i:n]``, as :meth:`_advance`
        does one at a time (a member of stored blocks has one every 16-64 KiB:
        collecting each header byte by byte was most of the scanner's time); returns
        the index to go on from, ``i`` when nothing lay whole there."""
        if self._state == "frame":
            return self._walk_header(mv, i, n, out)
        if self._state == "zstd_block":
            check = 4 if self._zstd_checksum else 0
            while i + 3 <= n:
                bh = mv[i] | mv[i + 1] << 8 | mv[i + 2] << 16
                i += 3
                btype = (bh >> 1) & 3
                if btype == 3:
                    self.done = True
                    return i
                body = 1 if btype == 1 else bh >> 3
                if bh & 1:  # the frame's last block
                    end = i + body + check
                    if end > n:
                        self._skip = end - i
                        self._state = "end"
                        return i
                    # The frame ends here: on to the next one's header and blocks in the
                    # same loop while they lie whole in ``mv`` (zstd:chunked has a frame
                    # every ~64 KiB: one feed-loop round per frame, not three).
                    out.append(self._pos + end)
                    self._begin_frame(self._pos + end)
                    i = self._walk_header(mv, end, n, out)
                    if i == end or self._state != "zstd_block":
                        return i
                    check = 4 if self._zstd_checksum else 0
                    continue
                if i + body > n:
                    self._skip = body
                    return i
                i += body
            return i
        while i + 5 <= n:  # deflate stored blocks: BFINAL and BTYPE, LEN, NLEN
            head = mv[i]
            length = mv[i + 1] | mv[i + 2] << 8
            i += 5
            if head & 0x06 or mv[i - 2] | mv[i - 1] << 8 != length ^ 0xFFFF:
                self._start_search()  # a compressed block: its end is not recorded
                return i
            if head & 0x01:  # BFINAL: the trailer (CRC32, ISIZE), then the next member
                self._skip = length + 8
                self._state = "end"
                return i
            if i + length > n:
                self._skip = length
                return i
            i += length
        return i

    def _walk_header(self, mv: memoryview, i: int, n: int, out: list[int]) -> int:
        """A frame's header, read in place when it lies whole in ``mv[i:n]``."""
        if self.kind == "gzip":
            if i + 12 > n:
                return i
            if mv[i] != 0x1F or mv[i + 1] != 0x8B or mv[i + 2] != 0x08:
                self.done = True
                return n
            self._flg = flg = mv[i + 3]
            if not flg & 0x04:
                self._start_deflate()
                return i + 10
            end = i + 12 + (mv[i + 10] | mv[i + 11] << 8)
            if end > n:
                return i
            total = _gzip_recorded_length(bytes(mv[i + 12 : end]))
            if total is not None and total > end - i:
                self._skip = total - (end - i)
                self._state = "end"
            else:
                self._start_deflate()
            return end
        if i + 8 > n:
            return i
        magic = mv[i] | mv[i + 1] << 8 | mv[i + 2] << 16 | mv[i + 3] << 24
        if _ZSTD_SKIPPABLE_LO <= magic <= _ZSTD_SKIPPABLE_HI:
            self._skip = mv[i + 4] | mv[i + 5] << 8 | mv[i + 6] << 16 | mv[i + 7] << 24
            self._state = "end"
            if not self._skip:
                out.append(self._pos + i + 8)
                self._begin_frame(self._pos + i + 8)
            return i + 8
        fhd = mv[i + 4]
        if bytes(mv[i : i + 4]) != ZSTD_MAGIC or fhd & 0x08:
            self.done = True
            return n
        single = (fhd >> 5) & 1
        end = i + 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + (single, 2, 4, 8)[fhd >> 6]
        if end > n:
            return i
        self._zstd_checksum = bool(fhd & 0x04)
        self._state = "zstd_block"
        return end

    def _start_deflate(self) -> None:
        """The member that starts at ``_frame_start`` does not record its length, and
        its deflate data follows (no FNAME, FCOMMENT or FHCRC field first): walk its
        blocks while they are stored ones, each of which records its length (RFC 1951
        §3.2.4; deflate writers store what does not compress: already compressed files,
        random bytes), and search only from the first compressed block on."""
        if self._flg & 0x1A:
            self._start_search()
            return
        self._hdr.clear()
        self._state = "deflate_stored"

    def _start_search(self) -> None:
        """The member that starts at ``_frame_start`` does not record its length: look
        for the next member's header from the next unread byte on."""
        self._hdr.clear()
        self._state = "search"
        self._carry = b""

    def _search(self, mv: memoryview, i: int, out: list[int]) -> int:
        """Search ``mv[i:]`` (absolute offset ``self._pos + i``) for a member header;
        returns the index to continue from (the header's start, or the end of ``mv``)."""
        at = self._pos + i
        # No header may start at or past this absolute offset (SEARCH_MAX).
        last = self._frame_start + SEARCH_MAX
        found = -1
        if self._carry:
            # A header that starts in the previous feed's last bytes.
            probe = self._carry + bytes(mv[i : i + 3])
            m = _GZIP_HEADER_RE.search(probe)
            if m is not None and m.start() < len(self._carry):
                found = at - len(self._carry) + m.start()
                if found >= last:
                    found = -1
        if found < 0:
            end = min(len(mv), last - self._pos + 3)  # a header is 4 bytes
            m = _GZIP_HEADER_RE.search(mv, i, end) if end > i else None
            if m is not None:
                found = self._pos + m.start()
            elif end < len(mv) or self._pos + len(mv) >= last + 3:
                self.done = True  # searched to SEARCH_MAX: the member is the rest
                return len(mv)
        if found < 0:
            self._carry = (self._carry + bytes(mv[max(i, len(mv) - 3):]))[-3:]
            return len(mv)
        out.append(found)
        self._begin_frame(found)
        if found < at:  # the header began in the carried bytes: they are its first ones
            self._hdr += self._carry[len(self._carry) - (at - found):]
        self._carry = b""
        return max(i, found - self._pos)


def _gzip_recorded_length(extra: bytes) -> int | None:
    """The member length recorded in a gzip FEXTRA field ('PB' or BGZF 'BC'), if any."""
    i = 0
    while i + 4 <= len(extra):
        si = extra[i : i + 2]
        ln = int.from_bytes(extra[i + 2 : i + 4], "little")
        val = extra[i + 4 : i + 4 + ln]
        if si == _GZIP_EXTRA_ID and ln == 4:
            return int.from_bytes(val, "little")
        if si == b"BC" and ln == 2:
            return int.from_bytes(val, "little") + 1
        i += 4 + ln
    return None


def stream_kind(prefix: bytes) -> str | None:
    """'gzip' or 'zstd' when ``prefix`` starts a stream of frames pybuild can cut, else None."""
    if prefix[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if prefix[:4] == ZSTD_MAGIC:
        return "zstd"
    return None
