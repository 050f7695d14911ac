import gzip
import os
import random
import struct
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.chunker import ChunkParams, Cutter
from cas.frames import FrameScanner, gzip_member, stream_kind, zstd_frame

SMALL = ChunkParams(min_size=256, avg_size=1024, max_size=4096)


def cut(data: bytes, step: int, params: ChunkParams = ChunkParams()) -> list[bytes]:
    c = Cutter(params)
    step = min(step, c.max_feed)
    out: list[bytes] = []
    for i in range(0, len(data), step):
        out += [bytes(p) for p in c.feed(data[i : i + step])]
    return out + [bytes(p) for p in c.finish()]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=40000), st.integers(min_value=1, max_value=9000))
def test_pieces_concatenate_to_the_input_and_ignore_feed_sizes(data: bytes, step: int) -> None:
    pieces = cut(data, step, SMALL)
    assert b"".join(pieces) == data
    assert pieces == cut(data, len(data) + 1, SMALL)
    assert all(len(p) <= SMALL.max_size for p in pieces)


def test_insertion_near_the_start_changes_only_nearby_pieces() -> None:
    rnd = random.Random(1)
    data = rnd.randbytes(24 << 20)
    edited = data[:5000] + b"inserted bytes" + data[5000:]
    a, b = cut(data, 1 << 20), cut(edited, 1 << 20)
    assert len(a) > 40
    changed = set(b) - set(a)
    assert 1 <= len(changed) <= 2, "only the piece(s) around the insertion may change"
    assert b[-10:] == a[-10:]


def test_default_piece_sizes_are_in_the_chosen_range() -> None:
    pieces = cut(os.urandom(16 << 20), 4 << 20)
    avg = sum(map(len, pieces)) / len(pieces)
    assert 64 << 10 <= avg <= 1 << 20


def _ends(frames: list[bytes]) -> list[int]:
    out, acc = [], 0
    for f in frames:
        acc += len(f)
        out.append(acc)
    return out


@pytest.mark.parametrize("writer", [gzip_member, zstd_frame, gzip.compress], ids=["gzip-pb", "zstd", "gzip-plain"])
@pytest.mark.parametrize("step", [1, 13, 4096, 1 << 22])
def test_scanner_finds_every_frame_end(writer, step: int) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random(step)
    frames = [writer(rnd.randbytes(rnd.randint(0, 70000))) for _ in range(12)]
    blob = b"".join(frames)
    kind = stream_kind(blob)
    assert kind is not None
    scanner = FrameScanner(kind)
    found: list[int] = []
    for i in range(0, len(blob), step):
        found += scanner.feed(blob[i : i + step])
    # A member that does not record its length ends where the next one's header starts:
    # the last one's end is the stream's, unless its deflate blocks are stored ones
    # (random bytes), which record their lengths and are walked to the member's end.
    if writer is gzip.compress:
        assert found in (_ends(frames), _ends(frames)[:-1])
    else:
        assert found == _ends(frames)


def test_scanner_reads_bgzf_block_sizes_without_inflating() -> None:
    def bgzf(data: bytes) -> bytes:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        body = comp.compress(data) + comp.flush()
        bsize = 18 + len(body) + 8 - 1
        head = b"\x1f\x8b\x08\x04" + b"\0" * 4 + b"\0\xff" + struct.pack("<H2sHH", 6, b"BC", 2, bsize)
        return head + body + struct.pack("<II", zlib.crc32(data), len(data))

    frames = [bgzf(os.urandom(1000) + b"a" * 5000) for _ in range(5)]
    assert gzip.decompress(b"".join(frames))  # a valid gzip stream
    scanner = FrameScanner("gzip")
    assert scanner.feed(b"".join(frames)) == _ends(frames)


def test_zstd_multi_block_frames_with_checksums() -> None:
    comp = zstandard.ZstdCompressor(level=1, write_checksum=True)
    frames = [comp.compress(os.urandom(300000) + b"x" * 400000) for _ in range(3)]
    scanner = FrameScanner("zstd")
    found: list[int] = []
    blob = b"".join(frames)
    for i in range(0, len(blob), 777):
        found += scanner.feed(blob[i : i + 777])
    assert found == _ends(frames)


@pytest.mark.parametrize("writer", [gzip_member, zstd_frame])
def test_frame_streams_are_cut_at_frame_ends_so_shared_frames_dedup(writer) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random(7)
    chunks = [rnd.randbytes(rnd.randint(30000, 300000)) for _ in range(30)]
    v1 = [writer(c) for c in chunks]
    v2 = list(v1)
    v2[3] = writer(rnd.randbytes(100000))  # one changed frame
    v2.insert(10, writer(rnd.randbytes(5000)))  # one inserted frame
    p1, p2 = cut(b"".join(v1), 65536), cut(b"".join(v2), 1 << 20)
    assert p1 == v1, "each frame up to max_size is exactly one piece"
    assert len(set(p2) - set(p1)) == 2


@pytest.mark.parametrize("writer", [gzip_member, zstd_frame])
def test_short_frames_join_the_next_until_a_piece_holds_frame_min(writer) -> None:  # type: ignore[no-untyped-def]
    rnd = random.Random(11)
    # zstd:chunked's shape: a tiny frame (a tar header) before each file's frames.
    frames = []
    for _ in range(20):
        frames += [writer(rnd.randbytes(rnd.randint(100, 600))), writer(rnd.randbytes(40000))]
    frames.append(writer(rnd.randbytes(300)))  # a short last frame stays a piece
    blob = b"".join(frames)
    pieces = cut(blob, 1 << 20)
    assert pieces == [frames[i] + frames[i + 1] for i in range(0, 40, 2)] + [frames[40]]
    assert cut(blob, 777) == pieces == cut(blob, 5000)
    # frame_min 0: every frame is a piece.
    assert cut(blob, 1 << 20, ChunkParams(frame_min=0)) == frames
    # The same frames in another layer give the same pieces: one changed file, one
    # inserted, differ in the pieces holding them only.
    edited = list(frames)
    edited[7] = writer(rnd.randbytes(40000))
    edited[20:20] = [writer(rnd.randbytes(200)), writer(rnd.randbytes(30000))]
    assert len(set(cut(b"".join(edited), 1 << 20)) - set(pieces)) == 2


def test_frame_min_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="frame_min"):
        ChunkParams(frame_min=-1)


def test_frames_larger_than_max_size_are_cut_further() -> None:
    big = zstd_frame(os.urandom(3 << 20))
    pieces = cut(big + zstd_frame(b"tail"), 1 << 20)
    assert len(pieces) > 3
    assert pieces[-1] == zstd_frame(b"tail")


def test_gzip_layers_decode_as_one_stream() -> None:
    parts = [os.urandom(1000), b"", b"abc" * 1000]
    assert gzip.decompress(b"".join(gzip_member(p) for p in parts)) == b"".join(parts)
    dctx = zstandard.ZstdDecompressor()
    blob = b"".join(zstd_frame(p) for p in parts)
    assert dctx.stream_reader(blob, read_across_frames=True).read() == b"".join(parts)


def test_garbage_after_frames_is_still_stored_exactly() -> None:
    blob = gzip_member(os.urandom(5000)) + b"not a frame at all" * 100
    assert b"".join(cut(blob, 100)) == blob


def test_chunk_params_are_validated() -> None:
    with pytest.raises(ValueError, match="min <= avg <= max"):
        ChunkParams(min_size=10, avg_size=5, max_size=1)


def received(data: bytes, reads: list[int], params: ChunkParams) -> list[bytes]:
    """Cut ``data`` filled in place through reserve/commit, each read taking the next size
    from ``reads`` (cycled) but never filling the whole reserved view."""
    c = Cutter(params)
    out: list[bytes] = []
    pos = i = 0
    while pos < len(data):
        view = c.reserve(min(c.max_feed, len(data) - pos))
        n = min(len(view), reads[i % len(reads)])
        i += 1
        view[:n] = data[pos : pos + n]
        pos += n
        out += [bytes(p) for p in c.commit(n)]
    out += [bytes(p) for p in c.finish()]
    c.release()
    return out


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=40000), st.lists(st.integers(min_value=1, max_value=9000), min_size=1, max_size=5))
def test_filling_in_place_cuts_as_feeding_does(data: bytes, reads: list[int]) -> None:
    assert received(data, reads, SMALL) == cut(data, len(data) + 1, SMALL)


def test_filling_in_place_cuts_frame_streams_as_feeding_does() -> None:
    rnd = random.Random(7)
    stream = b"".join(gzip_member(rnd.randbytes(rnd.randrange(1, 300_000)), level=0) for _ in range(40))
    assert received(stream, [1 << 20, 70_001, 3], ChunkParams()) == cut(stream, 1 << 20)


def test_a_commit_larger_than_the_reservation_is_refused() -> None:
    c = Cutter(SMALL)
    c.reserve(c.max_feed)
    with pytest.raises(ValueError, match="more than was reserved"):
        c.commit(10 * c.max_feed)
    with pytest.raises(ValueError, match="at most"):
        c.reserve(c.max_feed + 1)


def test_released_buffers_are_reused_and_large_streams_use_them() -> None:

    data = random.Random(3).randbytes(3 << 20)
    first = Cutter()
    first.feed(data[: first.max_feed])
    buf = first._buf
    assert len(buf) == 2 * first.max_feed  # a large stream takes a full-size buffer
    first.release()
    second = Cutter()
    pieces = [bytes(p) for p in second.feed(data[: second.max_feed])]
    assert second._buf is buf  # the pool gave the released one back
    pieces += [bytes(p) for p in second.feed(data[second.max_feed :])] + [bytes(p) for p in second.finish()]
    assert b"".join(pieces) == data
    second.release()
    small = Cutter()
    small.feed(b"x" * 1000)
    assert len(small._buf) < 2 * small.max_feed  # small streams do not take one
    small.release()
