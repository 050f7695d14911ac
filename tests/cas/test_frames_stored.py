"""gzip members at level 0: stored deflate blocks, written without zlib's compressor."""

from __future__ import annotations

import gzip
import os
import zlib

import pytest

from cas.frames import FrameScanner, gzip_member


@pytest.mark.parametrize("size", [0, 1, 65534, 65535, 65536, 65537, 131070, 200_000])
def test_stored_members_read_back_everywhere(size: int) -> None:
    data = os.urandom(size)
    member = gzip_member(data, 0)
    assert gzip.decompress(member) == data
    assert zlib.decompress(member, 31) == data
    blocks = max(1, -(-size // 65535))
    assert len(member) == 20 + 5 * blocks + size + 8  # header, block headers, bytes, trailer
    assert gzip_member(data, 0) == member


def test_stored_members_are_cut_at_their_ends() -> None:
    parts = [os.urandom(n) for n in (70_000, 10, 65535, 0, 300_000)]
    members = [gzip_member(p, 0) for p in parts]
    stream = b"".join(members)
    assert gzip.decompress(stream) == b"".join(parts)
    scanner = FrameScanner("gzip")
    ends = scanner.feed(stream)
    expected, total = [], 0
    for m in members:
        total += len(m)
        expected.append(total)
    assert ends == expected
