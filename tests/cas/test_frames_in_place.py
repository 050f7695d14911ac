"""The scanner reads headers that lie whole in a feed in place and collects the others
byte by byte: both find the same frame ends, for streams other tools wrote."""

from __future__ import annotations

import functools
import gzip
import random
import struct
import subprocess
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from cas.frames import FrameScanner, gzip_member, zstd_frame
from testkit.tools import require_tool

# Feeds of 2 bytes: no header lies whole in one, every one is collected byte by byte.
BYTE_BY_BYTE = [2]


def _scan(kind: str, blob: bytes, steps: list[int]) -> list[int]:
    scanner = FrameScanner(kind)
    found: list[int] = []
    pos = k = 0
    while pos < len(blob):
        step = steps[k % len(steps)]
        k += 1
        found += scanner.feed(blob[pos : pos + step])
        pos += step
    return found


def _ends(frames: list[bytes]) -> list[int]:
    total, out = 0, []
    for f in frames:
        total += len(f)
        out.append(total)
    return out


def _zstd_tool(data: bytes, *flags: str) -> bytes:
    return subprocess.run([require_tool("zstd"), "-q", "-c", *flags], input=data,
                          capture_output=True, check=True).stdout


def _gzip_members(rnd: random.Random) -> list[bytes]:
    members = []
    for i in range(8):
        # Random bytes only: stored blocks to the member's end (the last one final).
        text = b"text " * rnd.randrange(0, 3000) if i % 2 else b""
        data = rnd.randbytes(rnd.randrange(0, 70_000)) + text
        if i % 3 == 0:
            members.append(gzip.compress(data, compresslevel=1, mtime=0))  # stored blocks, no length
        elif i % 3 == 1:
            members.append(gzip_member(data, level=rnd.choice([0, 1])))  # length in FEXTRA
        else:
            comp = zlib.compressobj(6, zlib.DEFLATED, 31)  # Go's and Python's writers
            members.append(comp.compress(data) + comp.flush())
    return members


@functools.cache
def _zstd_frames(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    frames = []
    for i in range(8):
        data = rnd.randbytes(rnd.randrange(0, 300_000)) + b"text " * rnd.randrange(0, 3000)
        if i % 4 == 0:
            skippable = rnd.randbytes(rnd.randrange(0, 40))  # as zstd:chunked's manifest
            frames.append(struct.pack("<II", 0x184D2A50 + i % 16, len(skippable)) + skippable)
        elif i % 4 == 1:
            frames.append(_zstd_tool(data, "--check"))  # a checksum after the last block
        elif i % 4 == 2:
            frames.append(_zstd_tool(data, "--no-check", "-1"))
        else:
            frames.append(zstd_frame(data))
    return frames


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 1000), st.lists(st.integers(1, 200_000), min_size=1, max_size=6))
def test_gzip_member_ends_do_not_depend_on_the_feeds(seed: int, steps: list[int]) -> None:
    members = _gzip_members(random.Random(seed))
    blob = b"".join(members)
    byte_by_byte = _scan("gzip", blob, BYTE_BY_BYTE)
    assert _scan("gzip", blob, steps) == byte_by_byte == _scan("gzip", blob, [len(blob)])
    # Every end is found (but the last, the stream's end) and maybe a few false ones where
    # a header's bytes occur inside compressed data: never fewer.
    assert set(_ends(members)[:-1]) <= set(byte_by_byte)


@functools.cache
def _zstd_byte_by_byte(seed: int) -> list[int]:
    """The frame ends found in ``_zstd_frames(seed)`` fed byte by byte (the slow scan: once
    per seed, whatever other feeds the examples try)."""
    return _scan("zstd", b"".join(_zstd_frames(seed)), BYTE_BY_BYTE)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 3), st.lists(st.integers(1, 200_000), min_size=1, max_size=6))
def test_zstd_frame_ends_do_not_depend_on_the_feeds(seed: int, steps: list[int]) -> None:
    frames = _zstd_frames(seed)
    blob = b"".join(frames)
    byte_by_byte = _zstd_byte_by_byte(seed)
    # Frame ends are exact; the last one is the stream's end, unless the last frame is
    # an empty skippable one (its end is then found with its header).
    assert byte_by_byte in (_ends(frames)[:-1], _ends(frames))
    assert _scan("zstd", blob, steps) == byte_by_byte == _scan("zstd", blob, [len(blob)])


def test_a_stream_that_stops_being_frames_ends_the_scan_either_way() -> None:
    blob = zstd_frame(b"a" * 5000) + b"not a frame header at all" * 10 + zstd_frame(b"b")
    assert _scan("zstd", blob, BYTE_BY_BYTE) == _scan("zstd", blob, [1 << 20]) == [len(zstd_frame(b"a" * 5000))]
    blob = gzip_member(b"a" * 5000) + b"\x1f\x8b\x07" + b"x" * 100 + gzip_member(b"b")
    assert _scan("gzip", blob, BYTE_BY_BYTE) == _scan("gzip", blob, [1 << 20]) == [len(gzip_member(b"a" * 5000))]


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 1000), st.lists(st.integers(1, 70_000), min_size=1, max_size=6))
def test_many_short_zstd_frames_in_one_feed_are_each_found(seed: int, steps: list[int]) -> None:
    """As zstd:chunked writes them: a frame per tar header and per file chunk, many of them
    whole in one feed (walked in one loop), with and without checksums and empty ones."""
    rnd = random.Random(seed)
    frames = []
    for i in range(120):
        data = rnd.randbytes(rnd.choice([0, 1, 100, 600, 5_000, 20_000]))
        if i % 3 == 0:
            frames.append(zstd_frame(data))
        else:
            frames.append(_short_zstd(data, i % 3 == 1))
    blob = b"".join(frames)
    byte_by_byte = _scan("zstd", blob, BYTE_BY_BYTE)
    # The stream's end is reported when a frame's last bytes end a feed.
    assert byte_by_byte in (_ends(frames)[:-1], _ends(frames))
    assert _scan("zstd", blob, steps) == byte_by_byte == _scan("zstd", blob, [len(blob)])


def _short_zstd(data: bytes, checksum: bool) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=1, write_checksum=checksum).compress(data)
