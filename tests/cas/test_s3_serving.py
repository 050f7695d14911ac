"""Serving blobs from a store whose packs are in S3 (a real RADOS Gateway): pieces fetched
ahead in coalesced ranged reads, in order and digest-correct; a bounded local piece cache
that serves the second read from files, keeps its bound, and never serves a corrupt file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cas import Digest, StoreConfig
from cas.chunker import ChunkParams
from cas.errors import StoreCorrupt
from cas.open import open_store
from cas.piece_cache import PieceCache
from cas.remote_read import RemoteReader
from cas.s3_location import S3Location
from cas.store import Store

_SMALL = ChunkParams(min_size=16 << 10, avg_size=32 << 10, max_size=64 << 10)


class CountingPacks:
    """Counts the reads of the real S3 backend under a store (and may refuse them)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reads = 0
        self.refuse = False
        #: When set, the first two reads wait for each other: they must run at once.
        self.pair: threading.Barrier | None = None
        self._lock = threading.Lock()

    def read(self, name: str, offset: int, length: int) -> bytes:
        self._count()
        return bytes(self.inner.read(name, offset, length))

    def read_view(self, name: str, offset: int, length: int) -> bytes | memoryview:
        """The S3 backend's read without a copy (the one the store's reads use)."""
        self._count()
        read = getattr(self.inner, "read_view", self.inner.read)
        view: bytes | memoryview = read(name, offset, length)
        return view

    def _count(self) -> None:
        with self._lock:
            self.reads += 1
            n = self.reads
        if self.pair is not None and n <= 2:
            self.pair.wait(timeout=60)
        if self.refuse:
            raise AssertionError("read from S3 while the cache should serve")


def _blob(n: int, seed: int = 1, text: bool = False) -> bytes:
    rnd = random.Random(seed)
    if text:  # compressible: its pieces are stored zstd-compressed
        words = [b"layer", b"blob", b"piece", b"pack", b"tar", b"usr/lib/"]
        return b" ".join(rnd.choice(words) for _ in range(n // 5))[:n]
    return rnd.randbytes(n)


async def _open(root: Path, s3: S3Location, **kw: Any) -> tuple[Store, RemoteReader, CountingPacks]:
    config = StoreConfig(root, chunk_params=_SMALL, s3=s3, **kw)
    store = await open_store(config)
    remote = store.core.remote
    assert remote is not None
    counting = CountingPacks(remote.packs)
    remote.packs = counting  # type: ignore[assignment]
    return store, remote, counting


def _pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


async def _read(store: Store, digest: Digest, offset: int = 0, length: int | None = None) -> tuple[bytes, int]:
    """The bytes read through segments(), and how many segments were local files."""
    out, files = [], 0
    segs: AsyncIterator[Any] = store.segments(digest, offset, length)
    async for seg in segs:
        if seg.path is None:
            out.append(bytes(seg.data))
        else:
            files += 1
            out.append(_pread(seg.path, seg.offset, seg.length))
    return b"".join(out), files


async def test_blob_of_many_pieces_is_fetched_ahead_coalesced_and_then_served_from_files(
        s3_location: S3Location, tmp_path: Path) -> None:
    data = _blob(6 << 20) + _blob(1 << 20, seed=2, text=True)
    store, remote, counting = await _open(tmp_path / "s", s3_location, read_ahead=3)
    try:
        info = await store.put(data)
        pieces = len((await store.recipe(info.digest)).pieces)
        assert pieces > 100
        remote.fetch_bytes = 1 << 20  # many fetches, so that read-ahead has room
        counting.pair = threading.Barrier(2)  # broken (the read fails) unless two run at once
        got, files = await _read(store, info.digest)
        remote.flush()  # the cache is written behind the read
        assert f"sha256:{hashlib.sha256(got).hexdigest()}" == str(info.digest) and got == data
        assert files == 0
        # Adjacent pieces of the pack are one ranged read each, never more than 3 at once.
        assert 7 <= counting.reads < pieces // 5
        assert remote.fetches == counting.reads
        assert 2 <= remote.max_in_flight <= 3
        counting.pair = None
        cache = remote.cache
        assert cache is not None and len(cache) == pieces and cache.size == len(data)

        # The second read comes from the cache's files, without one request.
        counting.refuse = True
        got, files = await _read(store, info.digest)
        assert got == data and files == pieces
        assert await store.read_bytes(info.digest) == data
        # ... ranged reads too.
        for off, n in ((0, 1), (12345, 3 << 20), (len(data) - 7, 7), (5 << 20, (1 << 20) + 999)):
            part, _ = await _read(store, info.digest, off, n)
            assert part == data[off : off + n]
        assert counting.reads == remote.fetches
    finally:
        await store.close()

    # Another process (a reopen) trusts no file before hashing it.
    store, remote, counting = await _open(tmp_path / "s", s3_location)
    try:
        counting.refuse = True
        assert (await _read(store, info.digest))[0] == data
        assert remote.cache is not None and remote.cache.corrupt == 0
    finally:
        await store.close()


async def test_ranged_reads_from_s3_without_a_cache(s3_location: S3Location, tmp_path: Path) -> None:
    data = _blob(3 << 20, seed=3) + _blob(1 << 20, seed=4, text=True)
    store, remote, counting = await _open(tmp_path / "s", s3_location, piece_cache_bytes=0)
    try:
        assert remote.cache is None
        info = await store.put(data)
        for off, n in ((0, len(data)), (1, 1), (777_777, 2 << 20), (len(data) - 1, 1)):
            part, files = await _read(store, info.digest, off, n)
            assert part == data[off : off + n] and files == 0
        reads = counting.reads
        assert (await _read(store, info.digest))[0] == data
        assert counting.reads > reads  # nothing cached: fetched again
    finally:
        await store.close()


async def test_eviction_keeps_the_bound(s3_location: S3Location, tmp_path: Path) -> None:
    bound = 1 << 20
    a, b = _blob(2 << 20, seed=5), _blob(2 << 20, seed=6)
    store, remote, _ = await _open(tmp_path / "s", s3_location, piece_cache_bytes=bound)
    try:
        ia, ib = await store.put(a), await store.put(b)
        for _ in range(2):
            for info, data in ((ia, a), (ib, b)):
                assert (await _read(store, info.digest))[0] == data
                remote.flush()
                cache = remote.cache
                assert cache is not None
                on_disk = sum(f.stat().st_size for f in cache.root.glob("*/*"))
                assert 0 < cache.size <= bound and on_disk == cache.size
        assert cache.evicted > 0
    finally:
        await store.close()


async def test_a_corrupt_or_half_written_cache_file_is_refetched_never_served(
        s3_location: S3Location, tmp_path: Path) -> None:
    data = _blob(2 << 20, seed=7)
    store, remote, counting = await _open(tmp_path / "s", s3_location)
    try:
        info = await store.put(data)
        assert (await _read(store, info.digest))[0] == data
        remote.flush()
        cache = remote.cache
        assert cache is not None
        files = sorted(cache.root.glob("*/*"))
        victim = files[3]
        flipped = bytearray(victim.read_bytes())  # same size, other bytes
        flipped[100] ^= 0xFF
        victim.write_bytes(bytes(flipped))
        before = counting.reads
        got, served_files = await _read(store, info.digest)
        assert got == data
        assert cache.corrupt == 1 and counting.reads == before + 1
        assert served_files == len(files) - 1
        remote.flush()
        # Refetched: the file is right again and served.
        counting.refuse = True
        assert (await _read(store, info.digest)) == (data, len(files))
    finally:
        await store.close()

    # A crash left a temporary file and a truncated piece file: the next process removes
    # the first and refetches the second.
    victim = sorted(cache.root.glob("*/*"))[5]
    (victim.parent / (victim.name + ".9.tmp")).write_bytes(b"half")
    os.truncate(victim, 10)
    store, remote, counting = await _open(tmp_path / "s", s3_location)
    try:
        assert not list(cache.root.glob("*/*.tmp"))
        assert (await _read(store, info.digest))[0] == data
        assert remote.cache is not None and remote.cache.corrupt == 1 and counting.reads == 1
    finally:
        await store.close()


async def test_a_piece_whose_s3_bytes_are_wrong_is_refused(s3_location: S3Location, tmp_path: Path) -> None:
    data = _blob(1 << 20, seed=8)
    store, remote, counting = await _open(tmp_path / "s", s3_location)
    try:
        info = await store.put(data)
        inner = counting.inner
        counting.inner = type("Flipped", (), {"read": lambda self, n, o, ln: bytes(
            b ^ 1 for b in inner.read(n, o, ln))})()
        with pytest.raises(StoreCorrupt, match="does not match its BLAKE3"):
            await _read(store, info.digest)
        assert remote.cache is not None and len(remote.cache) == 0
    finally:
        await store.close()


def test_cache_puts_are_checked_and_one_process_holds_a_directory(tmp_path: Path) -> None:
    import blake3

    cache = PieceCache.open(tmp_path / "c", 100)
    assert cache is not None
    assert PieceCache.open(tmp_path / "c", 100) is None  # held
    with pytest.raises(ValueError, match="do not hash"):
        cache.put(b"\0" * 32, b"x")
    key = blake3.blake3(b"y" * 60).digest()
    assert cache.put(key, b"y" * 60) and not cache.put(key, b"y" * 60)
    big = blake3.blake3(b"z" * 101).digest()
    assert not cache.put(big, b"z" * 101)  # larger than the bound
    path = cache.get(key, 60)
    assert path is not None and path.read_bytes() == b"y" * 60
    # Pinned: a new piece that needs its room is not cached.
    other = blake3.blake3(b"w" * 50).digest()
    assert not cache.put(other, b"w" * 50)
    cache.unpin(key)
    assert cache.put(other, b"w" * 50) and cache.get(key, 60) is None and cache.size == 50
    cache.close()
    again = PieceCache.open(tmp_path / "c", 100)
    assert again is not None and len(again) == 1
    again.close()


def test_a_piece_being_written_is_a_miss_not_a_corrupt_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import blake3

    import cas.piece_cache

    cache = PieceCache.open(tmp_path / "c", 1000)
    assert cache is not None
    key = blake3.blake3(b"v" * 40).digest()
    seen: list[object] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:  # a reader comes while the file is written
        seen.append(cache.get(key, 40))
        real_replace(src, dst)

    monkeypatch.setattr(cas.piece_cache.os, "replace", replace)
    assert cache.put(key, b"v" * 40)
    assert seen == [None] and cache.corrupt == 0 and cache.size == 40
    path = cache.get(key, 40)
    assert path is not None and path.read_bytes() == b"v" * 40
    cache.close()


async def test_an_unwritable_cache_directory_stops_the_open_naming_it(s3_location: S3Location,
                                                                       tmp_path: Path) -> None:
    from cas.errors import StorageError

    if os.geteuid() == 0:
        blocker = tmp_path / "not-a-dir"
        blocker.write_bytes(b"")
        where = blocker / "pieces"  # under a file: no directory can be made there
    else:
        where = Path("/proc/pieces")
    with pytest.raises((StorageError, OSError)) as info:
        await open_store(StoreConfig(tmp_path / "s", s3=s3_location, piece_cache_dir=where))
    assert str(where.parent) in str(info.value)


async def test_fetches_grow_from_a_short_first_one_and_raw_runs_go_out_as_one_view(
        s3_location: S3Location, tmp_path: Path) -> None:
    data = _blob(6 << 20, seed=11)  # random: every piece stored raw
    store, remote, counting = await _open(tmp_path / "s", s3_location)
    try:
        info = await store.put(data)
        remote.cache = None
        segs = [seg async for seg in store.segments(info.digest)]
        # Fetches capped at 1, 2, 4 MiB: three ranged GETs, each handed out as one view
        # of its buffer (not one segment per piece).
        assert counting.reads == 3 == len(segs)
        assert all(seg.path is None and isinstance(seg.data, memoryview) for seg in segs)
        sizes = [seg.length for seg in segs]
        assert sizes[0] <= 1 << 20 < sizes[1] <= 2 << 20 < sizes[2] <= 4 << 20
        assert b"".join(bytes(seg.data or b"") for seg in segs) == data
        # A range starting and ending inside pieces: the views are cut to it.
        part = [bytes(seg.data or b"") async for seg in store.segments(info.digest, 12345, 3 << 20)]
        assert b"".join(part) == data[12345 : 12345 + (3 << 20)]
    finally:
        await store.close()


async def test_a_redirect_is_worked_out_once_per_blob_and_anew_after_the_blob_is_pushed_again(
        s3_location: S3Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _blob(3 << 20, seed=7)
    store = await open_store(StoreConfig(tmp_path / "s", chunk_params=_SMALL, s3=s3_location))
    try:
        digest = (await store.put(data)).digest
        url = await store.redirect_url(digest)
        assert url is not None
        assert await asyncio.to_thread(_fetch, url) == data

        # Known now: a second GET reads no recipe and no piece location.
        def no_plan(*_: Any) -> None:
            raise AssertionError("the redirect was worked out again")

        with monkeypatch.context() as m:
            m.setattr(store, "_plan", no_plan)
            again = await store.redirect_url(digest)
        assert again is not None and again.split("?")[0] == url.split("?")[0]

        # Deleted, collected, and pushed again in two uploads (two objects): the redirect
        # known for the first push must not be given out; the blob is streamed.
        assert await store.delete(digest)
        await store.gc(grace=0)
        ingest = await store.begin_ingest()
        await ingest.write(data[: 1 << 20])
        await ingest.checkpoint()  # seals what it holds: the blob's first object
        await ingest.write(data[1 << 20 :])
        assert (await ingest.commit(digest)).digest == digest
        assert await store.redirect_url(digest) is None
        assert (await _read(store, digest))[0] == data

        # Once more, in one upload: one object again, at a new place.
        assert await store.delete(digest)
        await store.gc(grace=0)
        assert (await store.put(data)).digest == digest
        third = await store.redirect_url(digest)
        assert third is not None and third.split("?")[0] != url.split("?")[0]
        assert await asyncio.to_thread(_fetch, third) == data
    finally:
        await store.close()


async def test_a_blob_sent_whole_before_a_checkpoint_and_committed_bare_is_one_object(
        s3_location: S3Location, tmp_path: Path) -> None:
    # As docker, skopeo and podman push a layer: every byte in one PATCH (after which the
    # registry parks the upload: a checkpoint), then a PUT with no body (the commit).
    data = _blob(3 << 20, seed=9)
    digest = Digest.of(data)
    store = await open_store(StoreConfig(tmp_path / "s", chunk_params=_SMALL, s3=s3_location))
    try:
        ingest = await store.begin_ingest()
        await ingest.write(data)
        await ingest.checkpoint()
        await ingest.checkpoint()  # again, with nothing new: nothing is sealed again
        await ingest.park()
        pack = ingest._parked_pack
        assert pack is not None
        segments = store.core.packs._list(pack[0])  # type: ignore[attr-defined]
        assert [(start, n) for start, n in segments if n] == [(0, len(data))]
        assert (await ingest.commit(digest)).digest == digest
        # The commit wrote no second object: the blob is the one the checkpoint sealed.
        assert store.core.packs._list(pack[0]) == segments  # type: ignore[attr-defined]
        url = await store.redirect_url(digest)
        assert url is not None
        assert await asyncio.to_thread(_fetch, url) == data
        assert (await _read(store, digest))[0] == data
        assert (await store.fsck()).ok

        # Bytes after the checkpoint: the sealed tail is dead, the blob two objects,
        # streamed; every byte still right.
        other = _blob(3 << 20, seed=10)
        ingest = await store.begin_ingest()
        await ingest.write(other[: 2 << 20])
        await ingest.park()
        await ingest.write(other[2 << 20 :])
        info = await ingest.commit(Digest.of(other))
        assert await store.redirect_url(info.digest) is None
        assert (await _read(store, info.digest))[0] == other
        assert (await store.fsck()).ok
    finally:
        await store.close()


def _fetch(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as direct:
        body: bytes = direct.read()
    return body


async def test_many_small_checkpoints_seal_no_pile_of_tail_copies(s3_location: S3Location,
                                                                   tmp_path: Path) -> None:
    # A client that sends a blob in small chunks, each ended by a checkpoint: a tail is
    # sealed only after four times its length came, so dead copies stay under a fifth.
    data = _blob(2 << 20, seed=12)
    store = await open_store(StoreConfig(tmp_path / "s", chunk_params=_SMALL, s3=s3_location))
    try:
        ingest = await store.begin_ingest()
        for start in range(0, len(data), 20_000):
            await ingest.write(data[start : start + 20_000])
            await ingest.checkpoint()
        pack = store.core.packs._list(ingest._writer.name)  # type: ignore[attr-defined,union-attr]
        written = sum(n for _, n in pack)
        assert len(data) - (64 << 10) <= written <= 1.25 * len(data)
        info = await ingest.commit(Digest.of(data))
        assert (await _read(store, info.digest))[0] == data
    finally:
        await store.close()
