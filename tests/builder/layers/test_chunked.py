"""The chunked-frame writer: one stream to every decoder, deterministic, deduplicating."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from layer_helpers import make_sample_tree, need_tool

from builder.layers import (
    DEFAULT_AVG_CHUNK,
    MEDIA_TYPE_GZIP,
    MEDIA_TYPE_ZSTD,
    changeset_of_tree,
    write_frames,
    write_layer,
    write_layer_file,
    write_tar,
)

EPOCH = 1_700_000_000


def layer(root: Path, **options: object) -> tuple[bytes, object]:
    out = io.BytesIO()
    blob = write_layer(changeset_of_tree(root), out, source_date_epoch=EPOCH, **options)
    return out.getvalue(), blob


def plain_tar(root: Path) -> bytes:
    buf = io.BytesIO()
    write_tar(changeset_of_tree(root), buf, source_date_epoch=EPOCH)
    return buf.getvalue()


@pytest.fixture
def big_tree(tmp_path: Path) -> Path:
    root = tmp_path / "big"
    make_sample_tree(root)
    rnd = random.Random(7)
    (root / "data").mkdir()
    for i in range(40):
        (root / "data" / f"f{i:02d}").write_bytes(rnd.randbytes(rnd.randint(1, 60_000)))
    (root / "data" / "text").write_bytes(b"all work and no play " * 40_000)
    return root


def test_gzip_layer_is_one_stream_equal_to_the_tar(big_tree: Path) -> None:
    data, blob = layer(big_tree, avg_size=16384)
    tar = plain_tar(big_tree)
    assert len(blob.frame_sizes) > 10
    assert gzip.decompress(data) == tar
    need_tool("gzip")
    assert subprocess.run(["gzip", "-dc"], input=data, capture_output=True,
                          check=True).stdout == tar
    assert blob.media_type == MEDIA_TYPE_GZIP
    assert blob.diff_id.encoded == hashlib.sha256(tar).hexdigest()
    assert blob.digest.encoded == hashlib.sha256(data).hexdigest()
    assert (blob.size, blob.uncompressed_size) == (len(data), len(tar))


def test_zstd_layer_is_one_stream_equal_to_the_tar(big_tree: Path) -> None:
    data, blob = layer(big_tree, compression="zstd", avg_size=16384)
    tar = plain_tar(big_tree)
    assert len(blob.frame_sizes) > 10
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    assert reader.read() == tar
    need_tool("zstd")
    assert subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                          check=True).stdout == tar
    assert blob.media_type == MEDIA_TYPE_ZSTD


def test_every_frame_is_an_independent_member(big_tree: Path) -> None:
    data, blob = layer(big_tree, avg_size=16384)
    pieces, pos = [], 0
    for size, digest in zip(blob.frame_sizes, blob.frame_keys):
        frame = data[pos:pos + size]
        assert blake3.blake3(frame).hexdigest() == digest
        # gzip member carrying its own length in FEXTRA 'PB'
        assert frame[:2] == b"\x1f\x8b" and frame[12:14] == b"PB"
        assert int.from_bytes(frame[16:20], "little") == size
        pieces.append(zlib.decompress(frame, wbits=31))
        pos += size
    assert pos == len(data)
    assert b"".join(pieces) == plain_tar(big_tree)
    assert max(len(p) for p in pieces) <= 4 * 16384


def test_output_does_not_depend_on_thread_count(big_tree: Path) -> None:
    outs = {layer(big_tree, workers=w, avg_size=8192)[0] for w in (0, 1, 2, 5)}
    assert len(outs) == 1


def test_identical_files_in_different_layers_share_frames(tmp_path: Path) -> None:
    payload = random.Random(1).randbytes(1_500_000)
    one, two = tmp_path / "one", tmp_path / "two"
    (one / "usr" / "lib").mkdir(parents=True)
    (one / "usr" / "lib" / "libbig.so").write_bytes(payload)
    (one / "etc").mkdir()
    (one / "etc" / "conf").write_text("one\n")
    (two / "opt" / "app").mkdir(parents=True)
    (two / "opt" / "app" / "libbig-copy.so").write_bytes(payload)
    (two / "aaa").write_bytes(random.Random(2).randbytes(70_000))
    _, a = layer(one)
    _, b = layer(two)
    shared = set(a.frame_keys) & set(b.frame_keys)
    assert shared, "no frame shared between two layers holding the same 1.5 MB file"
    # Shared frames cover the file except at most one chunk at each end.
    max_chunk = 4 * DEFAULT_AVG_CHUNK
    data, _ = layer(one)
    shared_plain = 0
    pos = 0
    for size, digest in zip(a.frame_sizes, a.frame_keys):
        if digest in shared:
            shared_plain += len(gzip.decompress(data[pos:pos + size]))
        pos += size
    assert shared_plain >= len(payload) - 2 * max_chunk


def test_two_percent_changed_files_keep_most_frames_shared(tmp_path: Path) -> None:
    """The chunk-size decision (see builder/layers/chunked.py): at the default size,
    changing 2% of ~600 files of mixed sizes keeps >= 80% of the frames shared."""
    rnd = random.Random(42)
    a, b = tmp_path / "a", tmp_path / "b"
    words = [rnd.randbytes(rnd.randint(2, 9)).hex().encode() for _ in range(3000)]
    for i in range(600):
        n = int(rnd.expovariate(1 / 16000)) + 100
        body = b" ".join(rnd.choice(words) for _ in range(n // 8))[:n] if i % 3 else rnd.randbytes(n)
        for root in (a, b):
            d = root / f"dir{i % 20:02d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"file{i:04d}").write_bytes(body)
    changed = rnd.sample(sorted(b.rglob("file*")), 12)
    for f in changed:
        body = bytearray(f.read_bytes())
        body[len(body) // 2] ^= 0xFF
        f.write_bytes(bytes(body))
    # Frame boundaries do not depend on the compression; zstd keeps the test fast.
    _, la = layer(a, compression="zstd", level=1)
    _, lb = layer(b, compression="zstd", level=1)
    shared = set(la.frame_keys) & set(lb.frame_keys)
    fraction = sum(d in shared for d in lb.frame_keys) / len(lb.frame_keys)
    assert fraction >= 0.80, f"only {fraction:.0%} of frames shared"
    assert la.diff_id != lb.diff_id


def test_write_layer_file_is_atomic_and_matches_stream(big_tree: Path, tmp_path: Path) -> None:
    target = tmp_path / "blob"
    blob = write_layer_file(changeset_of_tree(big_tree), target, source_date_epoch=EPOCH)
    data, blob2 = layer(big_tree)
    assert target.read_bytes() == data and blob == blob2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".layer-")] == []


def test_unknown_compression_is_refused(big_tree: Path) -> None:
    with pytest.raises(ValueError, match="unknown compression 'brotli'"):
        layer(big_tree, compression="brotli")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=12), st.sampled_from(["gzip", "zstd"]))
def test_any_stream_round_trips(parts: list[bytes], compression: str) -> None:
    out = io.BytesIO()
    blob = write_frames(parts, out, compression=compression, avg_size=256, workers=2)
    data = b"".join(parts)
    got = out.getvalue()
    if compression == "gzip":
        assert (gzip.decompress(got) if got else b"") == data
    else:
        assert zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(got), read_across_frames=True).read() == data
    assert blob.uncompressed_size == len(data)
    assert blob.diff_id.encoded == hashlib.sha256(data).hexdigest()


def test_memory_stays_bounded_on_a_large_stream() -> None:
    block = os.urandom(1 << 20)

    def stream():
        for i in range(48):
            yield block[i:] + block[:i]

    class Sink:
        written = 0

        def write(self, data: bytes) -> int:
            self.written += len(data)
            return len(data)

    sink = Sink()
    tracemalloc.start()
    try:
        blob = write_frames(stream(), sink, compression="zstd", level=1, workers=2)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert blob.uncompressed_size == 48 << 20
    assert sink.written == blob.size
    # 4 batches in flight (~512 KiB each, and their frames), 2 waiting hash updates,
    # FastCDC's buffer, one input block: a few MiB
    assert peak < 12 << 20, f"peak {peak >> 20} MiB for a 48 MiB stream"


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_cas_finds_exactly_our_frame_boundaries(big_tree: Path, compression: str) -> None:
    from itertools import accumulate

    from cas.frames import FrameScanner, stream_kind

    data, blob = layer(big_tree, compression=compression, avg_size=16384)
    assert stream_kind(data[:16]) == compression
    scanner = FrameScanner(compression)
    ends = []
    for i in range(0, len(data), 7777):  # odd feed sizes: boundaries inside feeds
        ends += scanner.feed(data[i:i + 7777])
    ends += scanner.finish()
    assert ends == list(accumulate(blob.frame_sizes))


def test_incompressible_chunks_are_stored_and_still_one_gzip_stream(tmp_path: Path) -> None:
    from builder.layers.chunked import gzip_frame, looks_incompressible

    rnd = random.Random(7).randbytes(200_000)
    text = b"".join(b"line %d of a very compressible file\n" % i for i in range(6000))
    assert looks_incompressible(rnd[:65536]) and not looks_incompressible(text[:65536])
    assert not looks_incompressible(rnd[:8000])  # too small to guess: compressed as usual
    stored = gzip_frame(rnd[:65536], 6)
    assert len(stored) > 65536  # stored blocks: the bytes plus framing
    assert zlib.decompress(stored, 31) == rnd[:65536]
    assert len(gzip_frame(text[:65536], 6)) < 65536 // 10
    assert gzip_frame(rnd[:65536], 6) == stored  # deterministic

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "random.bin").write_bytes(rnd)
    (tmp_path / "t" / "text.txt").write_bytes(text)
    data, blob = layer(tmp_path / "t")
    again, _ = layer(tmp_path / "t")
    assert data == again
    tar = gzip.decompress(data)
    assert hashlib.sha256(tar).hexdigest() == blob.diff_id.encoded  # type: ignore[attr-defined]
    # the random file is stored (no gain), the text still compressed
    assert len(rnd) < len(data) < len(rnd) + len(text) // 4
