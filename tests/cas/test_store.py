import asyncio
import contextlib
import os
import random
import sqlite3
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cas import (
    BlobUnknown,
    Digest,
    DigestMismatch,
    IngestUnknown,
    InvalidRange,
    SizeMismatch,
    SourceFailed,
    Store,
    UnsupportedDigestAlgorithm,
)
from cas.frames import gzip_member
from cas.packs import MemoryPacks
from tests.helpers.disks import small_filesystem


async def test_put_read_round_trip_and_digest(store: Store) -> None:
    data = os.urandom(3 << 20)
    info = await store.put(data)
    assert info.digest == Digest.of(data)
    assert info.size == len(data)
    assert await store.read_bytes(info.digest) == data
    assert (await store.stat(info.digest)) == info


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200000), offset=st.integers(0, 200000), length=st.integers(0, 200000))
def test_any_range_reads_back_exactly(tmp_path: Path, data: bytes, offset: int, length: int) -> None:
    async def run() -> None:
        async with await Store.open(tmp_path / "s") as store:
            info = await store.put(data)
            if offset + length <= len(data):
                got = b"".join([c async for c in store.read(info.digest, offset, length)])
                assert got == data[offset : offset + length]
            else:
                with pytest.raises(InvalidRange):
                    [c async for c in store.read(info.digest, offset, length)]

    asyncio.run(run())


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_every_registered_algorithm(store: Store, algorithm: str) -> None:
    data = b"payload" * 1000
    info = await store.put(data, algorithm=algorithm)
    assert info.digest == Digest.of(data, algorithm)
    assert await store.read_bytes(info.digest) == data


async def test_expected_digest_of_another_algorithm_is_checked(store: Store) -> None:
    data = os.urandom(100000)
    ing = await store.begin_ingest()
    await ing.write(data)
    info = await ing.commit(Digest.of(data, "sha512"))
    assert info.digest == Digest.of(data, "sha512")


async def test_digest_mismatch_names_both_and_commits_nothing(store: Store) -> None:
    data = os.urandom(2 << 20)
    wrong = Digest.of(b"something else")
    with pytest.raises(DigestMismatch) as err:
        await store.put(data, expected=wrong)
    assert str(wrong) in str(err.value) and str(Digest.of(data)) in str(err.value)
    assert await store.stat(Digest.of(data)) is None
    assert await store.stat(wrong) is None
    assert (await store.stats()).pieces == 0
    assert await store.list_ingests() == []


async def test_truncated_stream_is_a_size_mismatch(store: Store) -> None:
    data = os.urandom(5000)
    ing = await store.begin_ingest()
    await ing.write(data[:4000])
    with pytest.raises(SizeMismatch, match="expected 5000 bytes, received 4000"):
        await ing.commit(Digest.of(data), size=5000)
    assert await store.stat(Digest.of(data)) is None
    with pytest.raises(IngestUnknown):
        await ing.write(b"more")


async def test_unknown_algorithm_is_refused_before_writing(store: Store) -> None:
    with pytest.raises(UnsupportedDigestAlgorithm):
        await store.begin_ingest(algorithm="md5")


async def test_identical_pieces_are_stored_once_across_blobs(store: Store) -> None:
    rnd = random.Random(3)
    base = rnd.randbytes(8 << 20)
    a = await store.put(base)
    b = await store.put(base[:100] + b"edit" + base[100:])
    stats = await store.stats()
    assert stats.logical_bytes == a.size + b.size
    assert stats.physical_bytes < 1.2 * len(base)
    assert stats.dedup_ratio > 1.6
    ra, rb = await store.recipe(a.digest), await store.recipe(b.digest)
    assert len({p.key for p in ra.pieces} & {p.key for p in rb.pieces}) >= len(ra.pieces) - 2


async def test_compressible_pieces_are_stored_compressed_and_frames_raw(store: Store) -> None:
    text = b"".join(b"line %d of a very regular log file\n" % i for i in range(200000))
    info = await store.put(text)
    assert (await store.stats()).physical_bytes < len(text) / 3
    assert await store.read_bytes(info.digest) == text
    frames = b"".join(gzip_member(os.urandom(200000)) for _ in range(4))
    before = (await store.stats()).physical_bytes
    finfo = await store.put(frames)
    assert (await store.stats()).physical_bytes - before == len(frames)
    segs = [s async for s in store.segments(finfo.digest)]
    assert len(segs) == 1 and segs[0].path is not None, "raw pieces of one pack are one sendfile run"


async def test_small_blobs_are_inline(store: Store) -> None:
    info = await store.put(b'{"schemaVersion": 2}')
    segs = [s async for s in store.segments(info.digest)]
    assert segs[0].data == b'{"schemaVersion": 2}'
    assert (await store.stats()).packs == 0


async def test_empty_blob(store: Store) -> None:
    info = await store.put(b"")
    assert info.digest == Digest.of(b"")
    assert await store.read_bytes(info.digest) == b""


async def test_unknown_blob(store: Store) -> None:
    d = Digest.of(b"never stored")
    with pytest.raises(BlobUnknown, match="not in the store"):
        await store.read_bytes(d)
    assert await store.stat(d) is None


async def test_links_and_gc_keep_linked_blobs(store: Store) -> None:
    kept = await store.put(os.urandom(300000), link="repo:a")
    gone = await store.put(os.urandom(300000))
    assert await store.is_linked("repo:a", kept.digest)
    assert await store.holders(kept.digest) == ["repo:a"]
    report = await store.gc(grace=0)
    assert report.blobs_removed == 1
    assert await store.stat(gone.digest) is None
    assert await store.read_bytes(kept.digest)
    assert await store.unlink("repo:a", kept.digest)
    await store.gc(grace=0)
    stats = await store.stats()
    assert (stats.blobs, stats.pieces, stats.packs) == (0, 0, 0)
    assert (await store.fsck()).ok


async def test_gc_grace_protects_fresh_unlinked_blobs(store: Store) -> None:
    info = await store.put(os.urandom(1000))
    await store.gc(grace=3600)
    assert await store.stat(info.digest) is not None


async def test_link_to_a_missing_blob_is_refused(store: Store) -> None:
    with pytest.raises(BlobUnknown):
        await store.link("repo:x", Digest.of(b"nope"))


async def test_gc_never_removes_pieces_an_open_ingest_reuses(store: Store) -> None:
    data = os.urandom(6 << 20)
    first = await store.put(data)
    ing = await store.begin_ingest()
    await ing.write(data)  # reuses every piece of `first`
    await ing.checkpoint()
    assert await store.delete(first.digest)
    await store.gc(grace=0)
    info = await ing.commit(first.digest)
    assert await store.read_bytes(info.digest) == data
    assert (await store.fsck()).ok


async def test_gc_races_concurrent_ingests(store: Store) -> None:
    rnd = random.Random(11)
    shared = rnd.randbytes(2 << 20)
    stop = asyncio.Event()

    async def collector() -> int:
        runs = 0
        while not stop.is_set():
            await store.gc(grace=0)
            runs += 1
            await asyncio.sleep(0)
        return runs

    async def writer(i: int) -> None:
        for j in range(6):
            data = shared + rnd.randbytes(100000) + bytes([i, j])
            info = await store.put(data, link=f"w{i}" if j % 2 else None)
            if j % 2:
                assert await store.read_bytes(info.digest) == data

    task = asyncio.create_task(collector())
    await asyncio.gather(*(writer(i) for i in range(4)))
    stop.set()
    assert await task > 0
    report = await store.fsck()
    assert report.ok, report.problems
    assert (await store.stats()).blobs == 12


async def test_concurrent_ingests_of_the_same_content(store: Store) -> None:
    data = os.urandom(5 << 20)
    infos = await asyncio.gather(*(store.put(data) for _ in range(4)))
    assert len({i.digest for i in infos}) == 1
    stats = await store.stats()
    assert stats.blobs == 1
    assert stats.physical_bytes == len(data)
    await store.gc(grace=3600)
    assert (await store.stats()).packs == 1, "the losers' packs are removed"
    assert (await store.fsck()).ok


async def test_resume_after_restart(tmp_path: Path) -> None:
    data = os.urandom(9 << 20) + b"tail"
    store = await Store.open(tmp_path / "s")
    ing = await store.begin_ingest()
    await ing.write(data[: 5 << 20])
    await ing.write(data[5 << 20 : (5 << 20) + 777])
    await ing.checkpoint()
    ingest_id, offset = ing.id, ing.offset
    await ing.write(b"not checkpointed, lost")
    await store.close()

    store = await Store.open(tmp_path / "s")
    resumed = await store.resume_ingest(ingest_id)
    assert resumed.offset == offset == (5 << 20) + 777
    await resumed.write(data[offset:])
    info = await resumed.commit(Digest.of(data), size=len(data))
    assert await store.read_bytes(info.digest) == data
    assert (await store.fsck()).ok
    assert not list((tmp_path / "s" / "ingests").iterdir())
    await store.close()


async def test_resume_of_unknown_ingest(store: Store) -> None:
    with pytest.raises(IngestUnknown):
        await store.resume_ingest("0123abcd")
    with pytest.raises(IngestUnknown):
        await store.resume_ingest("../../etc")


async def test_expire_aborts_idle_ingests(store: Store) -> None:
    ing = await store.begin_ingest()
    await ing.write(os.urandom(3 << 20))
    await ing.checkpoint()
    assert len(await store.list_ingests()) == 1
    assert await store.expire_ingests(older_than=-1) == 1
    assert await store.list_ingests() == []
    assert (await store.stats()).packs == 0
    assert store.packs.names() == []


async def test_fsck_names_a_damaged_piece(store: Store) -> None:
    data = os.urandom(2 << 20)
    info = await store.put(data, link="keep")
    (pack,) = store.packs.names()
    path = store.packs.local_path(pack)
    assert path is not None
    raw = bytearray(path.read_bytes())
    raw[12345] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = await store.fsck()
    assert not report.ok
    assert any("do not match its BLAKE3" in p for p in report.problems)
    assert any(str(info.digest) in p for p in report.problems)


async def test_fsck_names_a_missing_pack_without_sending_to_fsck(store: Store) -> None:
    """fsck is the full report: its lines say what is wrong, not "run fsck"."""
    await store.put(os.urandom(2 << 20), link="keep")
    (pack,) = store.packs.names()
    path = store.packs.local_path(pack)
    assert path is not None
    path.unlink()
    report = await store.fsck()
    assert any(f"unreadable: pack {pack} is missing" in p for p in report.problems), report.problems
    assert not any("storage fsck" in p for p in report.problems), report.problems


@pytest.mark.parametrize("change", [+1, -1])
async def test_fsck_names_a_reference_count_the_recipes_do_not_match(store: Store, change: int) -> None:
    # Too high only leaks space; too low could let GC remove a piece a blob needs.
    shared = os.urandom(300 << 10)
    await store.put(shared + os.urandom(300 << 10), link="a")
    await store.put(shared + os.urandom(200 << 10), link="b")
    small = await store.put(os.urandom(5000), link="c")  # an inline piece
    assert (await store.fsck()).ok
    key = (await store.recipe(small.digest)).pieces[0].key
    with contextlib.closing(sqlite3.connect(store.root / "meta.db")) as db, db:
        db.execute("UPDATE pieces SET refs = refs + ? WHERE key = ?", (change, bytes.fromhex(key)))
    report = await store.fsck()
    assert report.problems == [
        f"piece {key}: reference count {1 + change}, but 1 recipes use it"]


async def test_fsck_memory_does_not_grow_with_the_bytes_of_inline_pieces(store: Store) -> None:
    # Small blobs keep their one piece inside the metadata: 3,000 of 14 KiB are 41 MiB of
    # pieces that fsck reads a blob (and a batch of the pieces' table) at a time.
    blobs = 3000
    for _ in range(blobs):
        await store.put(os.urandom(14 << 10), link="keep")
    assert store.packs.names() == []  # every piece is inline
    tracemalloc.start()
    try:
        report = await store.fsck()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.pieces_checked == blobs, report.problems
    assert peak < 12 << 20, f"fsck peaked at {peak} bytes"


async def test_full_disk_is_a_clear_error_and_keeps_committed_blobs(tmp_path: Path) -> None:
    from cas import StorageFull

    with small_filesystem(tmp_path / "small", "4m") as mnt:
        store = await Store.open(mnt / "s")
        try:
            kept = await store.put(os.urandom(1 << 20), link="keep")
            with pytest.raises(StorageFull, match="storage full"):
                await store.put(os.urandom(8 << 20))
            assert await store.read_bytes(kept.digest)
            report = await store.fsck()
            assert report.ok, report.problems
            assert (await store.stats()).blobs == 1, "nothing of the failed upload is visible"
        finally:
            await store.close()


async def test_checkpoint_keeps_only_a_small_tail(store: Store) -> None:
    data = os.urandom(3 << 20)
    ing = await store.begin_ingest()
    await ing.write(data)
    await ing.checkpoint()
    tails = list((store.root / "ingests").iterdir())
    assert len(tails) == 1
    assert tails[0].stat().st_size <= store.chunk_params.max_size
    info = await ing.commit(Digest.of(data))
    assert await store.read_bytes(info.digest) == data


class _GatedPacks(MemoryPacks):
    """Memory packs whose appends wait until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def create(self, name: str):  # type: ignore[no-untyped-def]
        writer = super().create(name)
        append = writer.append

        def gated(data):  # type: ignore[no-untyped-def]
            if not self.gate.wait(10):
                raise TimeoutError("the test never opened the gate")
            return append(data)

        writer.append = gated  # type: ignore[method-assign]
        return writer


async def test_writes_return_while_earlier_batches_are_still_being_stored(tmp_path: Path) -> None:
    packs = _GatedPacks()
    store = await Store.open(tmp_path / "s", packs=packs)
    try:
        data = os.urandom(8 << 20)
        ing = await store.begin_ingest()
        # Two 4 MiB batches are handed to the worker threads; neither can reach the pack
        # yet, and still the caller is not held up.
        await asyncio.wait_for(ing.write(data[: 4 << 20]), 5)
        await asyncio.wait_for(ing.write(data[4 << 20 :]), 5)
        assert ing.offset == len(data)
        packs.gate.set()
        info = await ing.commit(Digest.of(data))
        assert await store.read_bytes(info.digest) == data
        assert (await store.fsck()).ok
    finally:
        packs.gate.set()
        await store.close()


async def test_a_read_stopped_early_closes_its_file(store: Store) -> None:
    info = await store.put(os.urandom(20 << 20))

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    for _ in range(3):
        chunks = store.read(info.digest)
        first = await chunks.__anext__()
        assert len(first) == 4 << 20
        await chunks.aclose()
    assert open_fds() == before
    assert len(await store.read_bytes(info.digest)) == 20 << 20


@pytest.mark.parametrize("cancel_after", [0.0, 0.05, 0.2])
async def test_a_cancelled_commit_ends_first_and_keeps_the_blob(
    store: Store, monkeypatch: pytest.MonkeyPatch, cancel_after: float
) -> None:
    # Every byte is in when the commit starts: a transfer stopped then (the blob beside
    # it failed, Ctrl-C) keeps the blob rather than throwing it away, and the
    # cancellation is raised once the commit has ended - with nothing still running on
    # a thread, so the caller may close the store at once.
    import time

    data = os.urandom(6 << 20)
    real = store.meta.commit_blob

    def slow_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.4)  # the cancellation comes before the commit has ended
        return real(*args, **kwargs)

    monkeypatch.setattr(store.meta, "commit_blob", slow_commit)
    ingest = await store.begin_ingest()
    await ingest.write(data)
    task = asyncio.ensure_future(ingest.commit(Digest.of(data)))
    await asyncio.sleep(cancel_after)
    assert not task.done()
    task.cancel()
    task.cancel()  # a second Ctrl-C changes nothing
    with pytest.raises(asyncio.CancelledError):
        await task
    info = await store.stat(Digest.of(data))
    assert info is not None and info.size == len(data)
    assert await store.read_bytes(Digest.of(data)) == data
    assert (await store.stats()).open_ingests == 0
    report = await store.fsck()
    assert report.ok, report.problems
    await store.gc()
    assert (await store.fsck()).ok
    assert await store.read_bytes(Digest.of(data)) == data


async def test_a_cancelled_write_keeps_the_ingest_usable(store: Store) -> None:
    # A transfer that is stopped while a write waits for its batch checkpoints what it has.
    data = os.urandom(24 << 20)
    ingest = await store.begin_ingest()
    task = asyncio.ensure_future(ingest.write(data[: 16 << 20]))
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ingest.checkpoint()
    assert ingest.offset == 16 << 20
    await ingest.write(data[16 << 20 :])
    info = await ingest.commit(Digest.of(data))
    assert await store.read_bytes(info.digest) == data
    assert (await store.fsck()).ok


def source(data: bytes, read: int = 300_000, fail_at: int | None = None):  # type: ignore[no-untyped-def]
    """A blocking source for Ingest.receive: fills views from ``data``, ``read`` bytes at
    most per call; raises ConnectionResetError once it reaches ``fail_at``."""
    pos = 0

    def fill(view: memoryview) -> int:
        nonlocal pos
        if fail_at is not None and pos >= fail_at:
            raise ConnectionResetError("connection reset by peer")
        n = min(len(view), read, len(data) - pos, (fail_at - pos) if fail_at is not None else len(data))
        view[:n] = data[pos : pos + n]
        pos += n
        return n

    return fill


async def test_receive_fills_an_ingest_in_place_like_writes(store: Store) -> None:
    data = b"".join(gzip_member(os.urandom(random.Random(i).randrange(1, 400_000)), level=0)
                    for i in range(30))
    ingest = await store.begin_ingest()
    got = await ingest.receive(source(data), 5 << 20)
    assert got == ingest.offset == min(5 << 20, len(data))
    got += await ingest.receive(source(data[got:]), 1 << 40)
    assert got == len(data)
    assert await ingest.receive(source(b""), 1 << 20) == 0  # the source ended
    info = await ingest.commit(Digest.of(data), size=len(data))
    assert await store.read_bytes(info.digest) == data
    # The same pieces as writing the same bytes.
    written = await store.begin_ingest()
    await written.write(data)
    assert (await written.commit()).digest == info.digest
    assert (await store.recipe(info.digest)).pieces == (await store.recipe(Digest.of(data))).pieces
    assert (await store.fsck()).ok


async def test_a_failing_source_keeps_what_arrived_and_the_ingest_usable(store: Store) -> None:
    data = os.urandom(6 << 20)
    ingest = await store.begin_ingest()
    with pytest.raises(SourceFailed) as failed:
        await ingest.receive(source(data, fail_at=2_500_000), 1 << 40)
    assert isinstance(failed.value.__cause__, ConnectionResetError)
    assert ingest.offset == 2_500_000
    await ingest.checkpoint()
    await ingest.receive(source(data[ingest.offset :]), 1 << 40)
    info = await ingest.commit(Digest.of(data))
    assert await store.read_bytes(info.digest) == data
    assert (await store.fsck()).ok


@pytest.mark.parametrize("woken_source", ["ends", "fails"])
async def test_a_cancelled_receive_interrupts_its_source_and_keeps_the_ingest(
    store: Store, woken_source: str,
) -> None:
    """Cancelled while its source blocks: the source is woken (a socket shut down ends or
    fails the read), the caller sees the cancellation, the ingest keeps what arrived."""
    data = os.urandom(4 << 20)
    woken = threading.Event()
    started = threading.Event()
    first = source(data[: 1 << 20])

    def blocking(view: memoryview) -> int:
        n = first(view)
        if n:
            return n
        started.set()
        woken.wait(30)  # a socket read that only a shutdown ends
        if woken_source == "fails":
            raise ConnectionResetError("shut down")
        return 0

    ingest = await store.begin_ingest()
    task = asyncio.ensure_future(ingest.receive(blocking, 1 << 40, interrupt=woken.set))
    await asyncio.to_thread(started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert woken.is_set() and ingest.offset == 1 << 20
    await ingest.receive(source(data[1 << 20 :]), 1 << 40)
    info = await ingest.commit(Digest.of(data))
    assert await store.read_bytes(info.digest) == data


async def test_lookups_do_not_wait_for_a_commit_in_progress(store: Store) -> None:
    """Finding out that pieces are unknown, and reading a blob's locations, use their own
    connection: they do not queue behind another ingest's transaction."""
    data = os.urandom(1 << 20)
    info = await store.put(data)
    meta = store.meta
    with meta._lock:  # another ingest's commit holds the writer
        result: list[object] = []
        reader = threading.Thread(target=lambda: result.extend([
            meta.hold_existing("nobody", [(0, b"\x01" * 32)]),
            meta.blob(str(info.digest)),
        ]))
        reader.start()
        reader.join(10)
        assert not reader.is_alive()
    assert result[0] == {} and result[1] is not None


async def test_a_blob_with_a_tiny_last_piece_stays_one_run_of_its_pack(tmp_path: Path) -> None:
    from cas.ingest_pieces import INLINE_MAX
    from cas.meta import decode_recipe

    def layout(store: Store, digest: Digest) -> list[tuple[bytes, int]]:
        row = store.meta.blob(str(digest))
        assert row is not None
        return decode_recipe(row[1])

    # Cut a random blob once to learn where its content-defined boundaries fall, then
    # store (in a fresh store) a prefix ending a few bytes past one: a tiny last piece.
    data = os.urandom(2 << 20)
    async with await Store.open(tmp_path / "probe") as probe:
        pieces = layout(probe, (await probe.put(data)).digest)
    assert len(pieces) >= 3
    cut = sum(n for _, n in pieces[:-1]) + 100
    async with await Store.open(tmp_path / "store") as store:
        digest = (await store.put(data[:cut])).digest
        recipe = layout(store, digest)
        assert recipe[-1][1] == 100 <= INLINE_MAX
        locs = store.meta.locations([k for k, _ in recipe])
        # Every piece in the one pack, back to back: the blob is one contiguous run.
        assert {locs[k].pack for k, _ in recipe} == {locs[recipe[0][0]].pack} != {None}
        ends = [locs[k].offset + locs[k].stored for k, _ in recipe]
        assert [locs[k].offset for k, _ in recipe[1:]] == ends[:-1]
        assert await store.read_bytes(digest) == data[:cut]
        # A blob small enough to be one piece still lives in the metadata, not a pack.
        small = (await store.put(b"tiny config")).digest
        assert store.meta.locations([k for k, _ in layout(store, small)]).popitem()[1].pack is None


@pytest.mark.parametrize("piece", [False, True])
async def test_an_ingest_cancelled_while_it_is_recorded_is_not_left_open(
        store: Store, monkeypatch: pytest.MonkeyPatch, piece: bool) -> None:
    """A pull whose other blob fails cancels the blobs beside it, one of them maybe while
    its new ingest is being recorded: the record is written all the same, and nobody
    knows its id, so it must not stay open (``storage stats`` counted it until expiry)."""
    started, release = threading.Event(), threading.Event()
    create = store.meta.create_ingest

    def slow_create(*args: object) -> None:
        started.set()
        release.wait(10)
        create(*args)

    monkeypatch.setattr(store.meta, "create_ingest", slow_create)
    begin = asyncio.ensure_future(store.begin_piece_ingest() if piece else store.begin_ingest())
    assert await asyncio.to_thread(started.wait, 10)
    begin.cancel()
    await asyncio.sleep(0.05)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await begin
    assert await store.list_ingests() == []
    monkeypatch.setattr(store.meta, "create_ingest", create)
    ing = await store.begin_ingest()  # the store goes on as before
    assert [i.id for i in await store.list_ingests()] == [ing.id]


async def test_an_ingest_a_full_disk_kept_from_being_forgotten_is_forgotten_at_close(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgetting an ingest writes to the database: on a full disk, one that had written
    nothing past its checkpoint has no room of its own to give back, and stayed open
    (counted in ``storage stats``) until it expired. The blobs failing beside it give
    room back; the store tries again when it closes."""
    from cas.errors import StorageFull

    store = await Store.open(tmp_path / "s")
    ing = await store.begin_ingest()
    drop, refused = store.meta.drop_ingest, []

    def full_then_room(ingest_id: str) -> None:
        if len(refused) < 2:  # the first try and the one after giving back its bytes
            refused.append(ingest_id)
            raise StorageFull("the metadata database")
        drop(ingest_id)

    monkeypatch.setattr(store.meta, "drop_ingest", full_then_room)
    await ing.abort()  # what failed is what the caller reports, not this
    assert [i.id for i in await store.list_ingests()] == [ing.id]
    await store.close()
    assert refused == [ing.id, ing.id]
    async with await Store.open(tmp_path / "s") as again:
        assert await again.list_ingests() == []


async def test_an_export_cancelled_while_its_file_opens_leaves_no_temporary_file(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The worker thread that opens the temporary file runs on when the export is
    # cancelled (another blob of a copy failed): the file it makes must go all the same.
    import cas.store

    info = await store.put(b"exported bytes")
    entered, release, opened = threading.Event(), threading.Event(), threading.Event()

    def slow_open(path: Path, mode: str) -> object:
        entered.set()
        release.wait(10)
        try:
            return open(path, mode)
        finally:
            opened.set()

    monkeypatch.setattr(cas.store, "open", slow_open, raising=False)
    dest = tmp_path / "out" / "blob"
    export = asyncio.create_task(store.export(info.digest, dest))
    assert await asyncio.to_thread(entered.wait, 10)
    export.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await export
    assert await asyncio.to_thread(opened.wait, 10)
    assert sorted(p.name for p in dest.parent.iterdir()) == []
