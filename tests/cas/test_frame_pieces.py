"""A gzip member or zstd frame longer than ``max_size`` (a single-stream layer, as ``gzip``
and ``zstd`` write them) is cut into ``frame_piece`` pieces from its start, not by
FastCDC: past a change inside a compressed stream nothing more is shared either way."""

from __future__ import annotations

import random
import subprocess

import blake3
import pytest

from cas.chunker import ChunkParams, Cutter
from testkit.tools import require_tool


def _cut(blob: bytes, step: int, params: ChunkParams = ChunkParams()) -> list[bytes]:
    c = Cutter(params)
    step = min(step, c.max_feed)
    out: list[bytes] = []
    for i in range(0, len(blob), step):
        out += [bytes(p) for p in c.feed(blob[i : i + step])]
    out += [bytes(p) for p in c.finish()]
    c.release()
    return out


def _files(seed: int, changed: int | None = None) -> bytes:
    """40 files of 100 KiB, half random (stored by deflate), half text (compressed);
    file ``changed`` with other content."""
    rnd = random.Random(seed)
    parts = []
    for i in range(40):
        data = rnd.randbytes(100 << 10) if i % 2 else b"line %d of a text file\n" * 4600
        if i == changed:
            data = random.Random(99).randbytes(len(data))
        parts.append(data)
    return b"".join(parts)


def _tool(argv: list[str], data: bytes) -> bytes:
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def _shared(a: list[bytes], b: list[bytes]) -> int:
    keys = {blake3.blake3(p).digest() for p in a}
    return sum(len(p) for p in b if blake3.blake3(p).digest() in keys)


@pytest.mark.parametrize("step", [3, 70_001, 1 << 20])
def test_a_long_zstd_frame_is_cut_into_frame_pieces_from_its_start(step: int) -> None:
    blob = _tool([require_tool("zstd"), "-3", "-q", "-c"], _files(1))
    params = ChunkParams()
    assert len(blob) > params.max_size
    pieces = _cut(blob, step)
    assert b"".join(pieces) == blob
    assert [len(p) for p in pieces[:-1]] == [params.frame_piece] * (len(pieces) - 1)
    assert 0 < len(pieces[-1]) <= params.frame_piece


@pytest.mark.parametrize("tool", [["gzip", "-1", "-n", "-c"], ["zstd", "-3", "-q", "-c"]])
def test_single_stream_layers_share_the_pieces_before_a_change(tool: list[str]) -> None:
    argv = [require_tool(tool[0]), *tool[1:]]
    v1, v2 = _tool(argv, _files(2)), _tool(argv, _files(2, changed=30))
    same = next(i for i, (x, y) in enumerate(zip(v1, v2)) if x != y)  # first differing byte
    fixed = ChunkParams()
    a, b = _cut(v1, 1 << 20, fixed), _cut(v2, 1 << 20, fixed)
    assert b"".join(b) == v2
    # Every whole piece before the first difference is shared ...
    assert _shared(a, b) >= same - fixed.frame_piece
    # ... which is all that FastCDC shares of such a stream (it paid a tenth of a pull's CPU).
    cdc = ChunkParams(frame_piece=0)
    assert _shared(_cut(v1, 1 << 20, cdc), _cut(v2, 1 << 20, cdc)) <= _shared(a, b) + fixed.frame_piece


def test_frame_piece_is_at_most_max_size_and_not_negative() -> None:
    small = ChunkParams(min_size=256, avg_size=1024, max_size=4096)
    blob = _tool([require_tool("zstd"), "-1", "-q", "-c"], random.Random(3).randbytes(50_000))
    assert {len(p) for p in _cut(blob, 999, small)[:-1]} == {4096}
    with pytest.raises(ValueError, match="frame_piece"):
        ChunkParams(frame_piece=-1)
