"""Independently compressed frames: writing them, and finding their boundaries.

pybuild writes layers as a concatenation of frames, one per content-defined chunk of
the uncompressed tar stream (DESIGN.md, "Layers as chunked frames"). Any gzip or zstd
decoder reads such a layer as one stream.

**gzip members.** Each member pybuild writes carries its own total length in the
FEXTRA header field (RFC 1952 §2.3.1.1), subfield ``SI1='P' SI2='B'``, ``LEN=4``, value
the member's total size in bytes (uint32, little endian), so a reader finds member
boundaries without inflating. BGZF members (``SI1='B' SI2='C'``, ``BSIZE``) are read the
same way. Members without either field are found by inflating, up to a bound.

**zstd frames.** A frame's end is found by walking its header and block headers
(RFC 8878 §3.1.1) without decompressing; skippable frames are walked by their size.
"""

from __future__ import annotations

import struct
import zlib

import zstandard

__all__ = [
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "gzip_member",
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
    the same member on any machine.
    """
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    body = comp.compress(data) + comp.flush()
    total = _GZIP_HEADER_LEN + len(body) + 8
    header = _GZIP_HEADER.pack(GZIP_MAGIC, 8, 4, 0, 0, 255, 8, _GZIP_EXTRA_ID, 4, total)
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def zstd_frame(data: bytes | memoryview, level: int = 3) -> bytes:
    """One zstd frame holding ``data`` (content size recorded, no checksum)."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
