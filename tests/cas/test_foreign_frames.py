"""Gzip members written by other tools (no length recorded: eStargz, BGZF without ``BC``,
any concatenation of members) are found by their headers, never by inflating, and the
cut does not depend on how the stream is fed."""

from __future__ import annotations

import gzip
import random
import struct
import zlib

import pytest

from cas import frames
from cas.chunker import ChunkParams, Cutter
from cas.frames import FrameScanner, gzip_member


def _plain(data: bytes) -> bytes:
    """A member as Go's and Python's writers make them: no FEXTRA."""
    return gzip.compress(data, mtime=0)


def _bgzf_without_bc(data: bytes) -> bytes:
    """A BGZF-like member whose FEXTRA holds another subfield, no length."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = comp.compress(data) + comp.flush()
    head = b"\x1f\x8b\x08\x04" + b"\0" * 4 + b"\0\xff" + struct.pack("<H2sHH", 6, b"XY", 2, 7)
    return head + body + struct.pack("<II", zlib.crc32(data), len(data))


def _named(data: bytes) -> bytes:
    """A member with FNAME and a header CRC (FLG 0x0a)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = comp.compress(data) + comp.flush()
    head = b"\x1f\x8b\x08\x0a" + b"\0" * 4 + b"\0\x03" + b"layer.tar\0"
    head += struct.pack("<H", zlib.crc32(head) & 0xFFFF)
    return head + body + struct.pack("<II", zlib.crc32(data), len(data))


def _members(seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    writers = [_plain, _bgzf_without_bc, _named, gzip_member]
    return [writers[i % 4](rnd.randbytes(rnd.randint(0, 30000)) + b"t" * rnd.randint(0, 9000))
            for i in range(15)]  # the last one without a length


def _scan(blob: bytes, step: int) -> list[int]:
    scanner = FrameScanner("gzip")
    found: list[int] = []
    for i in range(0, len(blob), step):
        found += scanner.feed(blob[i : i + step])
    return found


@pytest.mark.parametrize("step", [1, 2, 3, 5, 4096, 1 << 22])
def test_foreign_members_are_found_by_their_headers_at_any_feed_size(step: int) -> None:
    members = _members(7)
    blob = b"".join(members)
    assert gzip.decompress(blob)  # one valid gzip stream
    ends = [sum(map(len, members[: i + 1])) for i in range(len(members))]
    # Every member's end, but the last one's: the stream's end is found at finish.
    assert _scan(blob, step) == ends[:-1]


def test_members_are_never_inflated(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the scanner inflated a member")

    monkeypatch.setattr(zlib, "decompressobj", refuse)
    monkeypatch.setattr(zlib, "decompress", refuse)
    members = _members(8)
    assert _scan(b"".join(members), 1000) == [sum(map(len, members[: i + 1]))
                                                for i in range(len(members) - 1)]


def test_shared_foreign_members_dedup_and_the_cut_ignores_feed_sizes() -> None:
    params = ChunkParams(min_size=1024, avg_size=4096, max_size=16384)
    members = _members(9)
    edited = list(members)
    edited[5] = _plain(b"changed" * 3000)

    def cut(blob: bytes, step: int) -> list[bytes]:
        c = Cutter(params)
        step = min(step, c.max_feed)
        out: list[bytes] = []
        for i in range(0, len(blob), step):
            out += [bytes(p) for p in c.feed(blob[i : i + step])]
        return out + [bytes(p) for p in c.finish()]

    a, b = cut(b"".join(members), 1 << 20), cut(b"".join(edited), 1 << 20)
    assert b"".join(b) == b"".join(edited)
    assert cut(b"".join(edited), 3) == b == cut(b"".join(edited), 999)
    shared = sum(len(p) for p in set(a) & set(b))
    unchanged = sum(len(m) for i, m in enumerate(members) if i != 5)
    # Only the pieces of the changed member (and its neighbour's tail, where a member
    # longer than max_size is cut further) differ.
    assert shared >= unchanged - 2 * params.max_size


@pytest.mark.parametrize("step", [1, 2, 3, 5, 999, 1 << 22])
def test_the_next_member_is_looked_for_up_to_search_max_bytes_after_a_member_start(
        step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "SEARCH_MAX", 1000)
    header = b"\x1f\x8b\x08\x00" + b"\0" * 6

    def blob(at: int) -> bytes:  # a member starting at 0, the next one's header at ``at``
        return header + b"a" * (at - len(header)) + header + b"b" * 3000

    assert _scan(blob(999), step) == [999]  # the last offset it may start at
    assert _scan(blob(1000), step) == []  # too far: the first member is the rest
    # The limit counts from each member's start, not from the stream's.
    twice = header + b"a" * 500 + blob(999)
    assert _scan(twice, step) == [510, 510 + 999]
    # A single-stream layer (one long member): only its first SEARCH_MAX bytes are searched.
    long = _plain(bytes(random.Random(3).choices(b"abcdefgh", k=60000)))
    assert len(long) > 10000
    assert _scan(long + header, step) == []
    monkeypatch.setattr(frames, "SEARCH_MAX", 1 << 20)
    assert _scan(long + header, step) == [len(long)]


@pytest.mark.parametrize("step", [1, 2, 5, 4096, 1 << 22])
def test_stored_deflate_blocks_are_walked_by_their_lengths_not_searched(
        step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "SEARCH_MAX", 1000)  # a search would give up at once
    rnd = random.Random(5)
    # Random bytes do not compress: the writers store them, in blocks of up to 64 KiB.
    stored = [gzip.compress(rnd.randbytes(n), compresslevel=level, mtime=0)
              for n, level in ((200000, 0), (70000, 1), (0, 0), (5000, 9))]
    ends = [sum(map(len, stored[: i + 1])) for i in range(len(stored))]
    assert _scan(b"".join(stored), step) == ends
    # A compressed block after stored ones: searched from there (found: it is short).
    mixed = gzip.compress(rnd.randbytes(300) + b"abc" * 3000, compresslevel=6, mtime=0)
    assert len(mixed) < 1000 and mixed[10] & 0x06  # one compressed block
    blob = b"".join([stored[0], mixed, stored[1]])
    assert _scan(blob, step) == [ends[0], ends[0] + len(mixed), len(blob)]
