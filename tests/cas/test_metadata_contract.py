"""The suite every metadata backend must pass: the contracts of ``cas.meta.Metadata``.

Each backend is a fixture param giving a way to open *handles* on one metadata store.
Two handles on the same store stand for two processes sharing it (registry replicas,
``pybuild storage gc`` beside a server): what one writes, the other must see, and no
contract may rest on what one handle remembers; one test runs a real second process.
A new backend (PostgreSQL) adds an entry to ``_OPENERS``: a picklable callable that
opens a handle, given the test's temporary directory.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from cas.errors import StoreClosed, StoreCorrupt
from cas.holders import ingest_holder
from cas.meta import CODEC_RAW, Location, Metadata, encode_recipe
from cas.pg_meta import PgMetadata
from cas.sqlite_meta import SqliteMetadata

Opener = Callable[[], Metadata]


@dataclass(frozen=True)
class SqliteOpener:
    """Opens handles on one SQLite metadata file; picklable, so another process can."""

    path: Path

    def __call__(self) -> Metadata:
        return SqliteMetadata(self.path)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@dataclass(frozen=True)
class PgOpener:
    """Opens handles on one PostgreSQL database (migrating it the first time)."""

    url: str

    def __call__(self) -> Metadata:
        return PgMetadata(self.url, migrate=True)


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a new handle on one metadata store per call; all are closed at the end."""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres")
        make: Opener = PgOpener(server.create_database(f"meta_{uuid.uuid4().hex[:12]}"))
    else:
        make = SqliteOpener(tmp_path / "meta.db")
    yield from _tracked(make)


def _tracked(make: Opener) -> Iterator[Opener]:
    handles: list[Metadata] = []

    def open_handle() -> Metadata:
        handles.append(make())
        return handles[-1]

    open_handle.make = make  # type: ignore[attr-defined]  # for other processes
    yield open_handle
    for h in handles:
        h.close()


@pytest.fixture
def meta(opener: Opener) -> Metadata:
    return opener()


def key(n: int) -> bytes:
    return blake3.blake3(n.to_bytes(4, "big")).digest()


def packed(k: bytes, pack: str, offset: int, length: int = 100) -> Location:
    return Location(k, length, length, CODEC_RAW, pack, offset)


def inline(k: bytes, length: int = 10) -> Location:
    return Location(k, length, length, CODEC_RAW, None, 0, b"x" * length)


def commit(meta: Metadata, digest: str, keys: list[bytes], *, ingest: str = "",
           pack: str | None = None, link: str | None = None) -> bool:
    """An ingest that stores ``keys`` (new pieces, in ``pack`` if given) and commits."""
    ingest = ingest or f"ing-{digest[-8:]}-{time.monotonic_ns()}"
    meta.create_ingest(ingest, "sha256")
    new: dict[bytes, Location] = {}
    if pack is not None:
        meta.set_ingest_pack(ingest, pack)
    for i, k in enumerate(keys):
        new[k] = packed(k, pack, i * 100) if pack is not None else inline(k)
    recipe = [(k, new[k].length) for k in keys]
    return meta.commit_blob(ingest, digest, sum(n for _, n in recipe), recipe, new, link)


def refs(meta: Metadata) -> dict[bytes, int]:
    return {loc.key: r for loc, r in meta.iter_pieces()}


# -- every call: visible to other handles, durable, closed handles -------------------------


def test_a_write_is_seen_by_another_handle_as_soon_as_it_returns(opener: Opener) -> None:
    a, b = opener(), opener()
    assert commit(a, D1, [key(1)], link="repo/a")
    assert b.blob(D1) is not None
    assert b.locations([key(1)]).keys() == {key(1)}
    assert b.holders(D1) == ["repo/a"]
    a.create_ingest("open1", "sha256")
    assert b.get_ingest("open1") is not None


def _gc_elsewhere(make: Opener) -> tuple[int, int]:
    """In another process: commit and link a blob, delete D1, collect pieces."""
    meta = make()
    try:
        commit(meta, D2, [key(2)], link="repo/b")
        meta.delete_blob(D1)
        return meta.collect_pieces()
    finally:
        meta.close()


def test_another_process_sees_our_writes_and_we_see_its(opener: Opener) -> None:
    a = opener()
    commit(a, D1, [key(1)], link="repo/a")
    a.create_ingest("ing", "sha256")
    assert a.hold_existing("ing", [(0, key(1))]).keys() == {key(1)}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        collected = pool.submit(_gc_elsewhere, opener.make).result(timeout=120)  # type: ignore[attr-defined]
    assert collected == (0, 0)  # our ingest holds D1's only piece
    assert a.blob(D1) is None and a.holders(D1) == []
    assert a.blob(D2) is not None and a.is_linked("repo/b", D2)
    assert a.locations([key(1), key(2)]).keys() == {key(1), key(2)}


def test_what_returned_survives_closing_and_reopening(opener: Opener) -> None:
    a = opener()
    commit(a, D1, [key(1), key(2)], link="repo/a")
    a.create_ingest("open1", "sha512")
    a.close()
    b = opener()
    assert b.blob(D1) == (20, encode_recipe([(key(1), 10), (key(2), 10)]))
    assert b.is_linked("repo/a", D1)
    row = b.get_ingest("open1")
    assert row is not None and row.algorithm == "sha512"


def test_calls_after_close_raise_store_closed_and_closing_twice_is_harmless(opener: Opener) -> None:
    a, b = opener(), opener()
    a.close()
    a.close()
    with pytest.raises(StoreClosed):
        a.blob(D1)
    with pytest.raises(StoreClosed):
        a.create_ingest("x", "sha256")
    assert b.blob(D1) is None  # other handles are unaffected


# -- ingests -----------------------------------------------------------------------------


def test_create_get_and_list_ingests(meta: Metadata) -> None:
    before = time.time()
    row = meta.create_ingest("first", "sha256")
    assert (row.id, row.algorithm, row.offset, row.npieces, row.pack) == ("first", "sha256", 0, 0, None)
    assert before <= row.created == row.updated <= time.time()
    meta.create_ingest("second", "blake3")
    assert meta.get_ingest("first") == row
    assert meta.get_ingest("nope") is None
    assert [r.id for r in meta.list_ingests()] == ["first", "second"]


def test_set_ingest_pack_registers_the_pack(opener: Opener) -> None:
    a, b = opener(), opener()
    a.create_ingest("ing", "sha256")
    a.set_ingest_pack("ing", "p1")
    assert b.is_pack_known("p1")
    assert "p1" in b.pack_names()
    assert b.pack_live()["p1"] == 0
    row = b.get_ingest("ing")
    assert row is not None and row.pack == "p1"


def test_checkpoint_records_pieces_and_progress_and_rewind_drops_what_came_after(meta: Metadata) -> None:
    commit(meta, D1, [key(9)])
    meta.create_ingest("ing", "sha256")
    meta.set_ingest_pack("ing", "p1")
    held = meta.hold_existing("ing", [(1, key(9))])
    rows = [(0, key(1), 100, packed(key(1), "p1", 0)), (1, key(9), 10, None)]
    meta.checkpoint("ing", rows, offset=110, npieces=2, pack_size=100, tail_len=7)
    row = meta.get_ingest("ing")
    assert row is not None
    assert (row.offset, row.npieces, row.pack_size, row.tail_len) == (110, 2, 100, 7)
    assert row.updated >= row.created
    recipe = meta.ingest_recipe("ing")
    assert [seq for seq, _ in recipe] == [0, 1]
    assert recipe[0][1] == packed(key(1), "p1", 0)
    assert recipe[1][1].key == key(9) and recipe[1][1].stored == -1
    assert held[key(9)].length == 10
    # Recorded after the checkpoint, then a crash: the resume rewinds to the checkpoint.
    meta.hold_existing("ing", [(2, key(9))])
    meta.rewind_ingest("ing")
    assert [seq for seq, _ in meta.ingest_recipe("ing")] == [0, 1]


def test_holds_pieces_once_a_piece_is_stored_until_the_last_one_is_collected(opener: Opener) -> None:
    a, b = opener(), opener()
    assert not a.holds_pieces()
    commit(a, D1, [key(1)])
    assert b.holds_pieces()
    assert b.delete_blob(D1)
    assert b.collect_pieces() == (1, 10)
    assert not a.holds_pieces()


def test_known_pieces_are_the_committed_ones_that_locations_finds(meta: Metadata) -> None:
    commit(meta, D1, [key(1), key(2)])
    asked = [key(1), key(3), key(1), key(2)]
    assert meta.known_pieces(asked) == {key(1), key(2)} == set(meta.locations(asked))
    assert meta.known_pieces([]) == set()


def test_hold_existing_returns_only_committed_pieces(meta: Metadata) -> None:
    commit(meta, D1, [key(1)])
    meta.create_ingest("ing", "sha256")
    found = meta.hold_existing("ing", [(0, key(1)), (1, key(2))])
    assert found.keys() == {key(1)}
    assert found[key(1)] == inline(key(1))
    assert meta.hold_existing("ing", [(2, key(3))]) == {}


def test_a_held_piece_outlives_its_blob_until_the_ingest_ends(opener: Opener) -> None:
    a, gc = opener(), opener()
    commit(a, D1, [key(1)])
    a.create_ingest("ing", "sha256")
    assert a.hold_existing("ing", [(0, key(1))]).keys() == {key(1)}
    assert gc.delete_blob(D1)
    assert gc.collect_pieces() == (0, 0)
    assert gc.locations([key(1)]).keys() == {key(1)}
    a.drop_ingest("ing")
    assert gc.collect_pieces() == (1, 10)
    assert gc.locations([key(1)]) == {}


def test_a_blob_an_ingest_links_keeps_its_pieces_until_the_ingest_ends(opener: Opener) -> None:
    # An ingest holds the blob it reuses pieces of by one link (ingest_holder): GC keeps
    # the blob while its other holders go; the ingest's commit, or its drop, removes it.
    a, gc = opener(), opener()
    commit(a, D1, [key(1), key(2)], link="repo/a")
    for end in ("commit", "drop"):
        ingest = f"ing-{end}"
        a.create_ingest(ingest, "sha256")
        assert a.link_all(ingest_holder(ingest), [D1]) == [D1]
        assert gc.unlink("repo/a", D1)
        assert gc.collect_blobs(time.time() + 60) == 0 and gc.collect_pieces() == (0, 0)
        assert gc.locations([key(1), key(2)]).keys() == {key(1), key(2)}
        if end == "commit":
            recipe = [(key(2), 10), (key(1), 10)]
            assert a.commit_blob(ingest, D2, 20, recipe, {}, "repo/b")
            assert refs(gc) == {key(1): 2, key(2): 2}
        else:
            a.drop_ingest(ingest)
        assert gc.holders(D1) == []
        assert gc.link("repo/a", D1)
    assert gc.unlink("repo/a", D1) and gc.collect_blobs(time.time() + 60) == 1
    assert refs(gc) == {key(1): 1, key(2): 1}  # D2's


def test_a_commit_naming_a_piece_no_longer_stored_fails_and_records_nothing(meta: Metadata) -> None:
    # A piece the ingest reused went meanwhile (its blob deleted, GC): the commit fails,
    # rather than record a blob whose bytes cannot be read.
    commit(meta, D1, [key(1), key(2)])
    meta.create_ingest("ing", "sha256")
    assert meta.link_all(ingest_holder("ing"), [D1]) == [D1]
    assert meta.delete_blob(D1) and meta.collect_pieces() == (2, 20)
    commit(meta, D2, [key(2)])
    new = {key(3): inline(key(3))}
    recipe = [(key(2), 10), (key(1), 10), (key(3), 10)]
    with pytest.raises(StoreCorrupt, match=f"{D1}|piece {key(1).hex()}"):
        meta.commit_blob("ing", D1, 30, recipe, new, "repo/a")
    assert meta.blob(D1) is None and meta.holders(D1) == []
    assert refs(meta) == {key(2): 1}
    assert meta.get_ingest("ing") is not None  # still open: the caller aborts it


def test_drop_ingest_forgets_it_and_trashes_its_pack(meta: Metadata) -> None:
    meta.create_ingest("ing", "sha256")
    meta.set_ingest_pack("ing", "p1")
    meta.checkpoint("ing", [(0, key(1), 100, packed(key(1), "p1", 0))], 100, 1, 100, 0)
    meta.drop_ingest("ing")
    assert meta.get_ingest("ing") is None
    assert meta.ingest_recipe("ing") == []
    assert not meta.is_pack_known("p1")
    assert [(p, o, n) for _, p, o, n in meta.trash()] == [("p1", None, None)]
    assert meta.locations([key(1)]) == {}
    meta.drop_ingest("unknown")  # a no-op


# -- commit_blob ---------------------------------------------------------------------------


def test_commit_blob_makes_the_blob_its_pieces_and_its_link_visible(meta: Metadata) -> None:
    assert commit(meta, D1, [key(1), key(2), key(1)], ingest="ing", pack="p1", link="repo/a")
    assert meta.blob(D1) == (300, encode_recipe([(key(1), 100), (key(2), 100), (key(1), 100)]))
    assert refs(meta) == {key(1): 2, key(2): 1}
    assert meta.get_ingest("ing") is None
    assert meta.is_linked("repo/a", D1)
    assert meta.pack_live()["p1"] == 200  # each piece stored once
    assert meta.trash() == []


def test_blob_head_is_the_size_and_a_commit_time_that_a_new_commit_changes(meta: Metadata) -> None:
    assert meta.blob_head(D1) is None
    before = time.time()
    commit(meta, D1, [key(1), key(2), key(1)], pack="p1")
    head = meta.blob_head(D1)
    assert head is not None and head[0] == 300 and before <= head[1] <= time.time()
    time.sleep(0.01)
    assert not commit(meta, D1, [key(1)])  # committed again while it exists: the same row,
    renewed = meta.blob_head(D1)  # the commit time renewed
    assert renewed is not None and renewed[0] == 300 and renewed[1] > head[1]
    assert meta.delete_blob(D1) and meta.blob_head(D1) is None
    time.sleep(0.01)
    commit(meta, D1, [key(1), key(2), key(1)], pack="p2")
    again = meta.blob_head(D1)
    assert again is not None and again[0] == 300 and again[1] > renewed[1]


def test_a_blob_committed_again_unlinked_gets_the_whole_grace_anew(meta: Metadata) -> None:
    """A push of a blob the store holds unlinked (its repository deleted long ago),
    committed without a link because the store keeps it cut otherwise: the registry
    records its own recipe, then links it. A GC in between must not take it: its grace
    counts from the last commit."""
    commit(meta, D1, [key(1), key(2)], pack="p1")
    first = time.time()
    time.sleep(0.05)
    assert not commit(meta, D1, [key(1), key(2)], ingest="again")  # no link: not yet
    assert meta.collect_blobs(first + 0.01) == 0  # older than the first commit only
    assert meta.link("repo/a", D1) and meta.is_linked("repo/a", D1)


def test_commit_blob_of_an_existing_blob_keeps_nothing_of_the_ingest(meta: Metadata) -> None:
    assert commit(meta, D1, [key(1)], pack="p1")
    assert not commit(meta, D1, [key(1)], ingest="again", pack="p2", link="repo/b")
    assert refs(meta) == {key(1): 1}
    assert meta.is_linked("repo/b", D1)  # the link is made all the same
    assert meta.get_ingest("again") is None
    assert not meta.is_pack_known("p2")
    assert ("p2", None, None) in [(p, o, n) for _, p, o, n in meta.trash()]


def test_a_piece_committed_first_elsewhere_turns_our_copy_into_trash(opener: Opener) -> None:
    a, b = opener(), opener()
    a.create_ingest("slow", "sha256")
    a.set_ingest_pack("slow", "p-slow")
    assert commit(b, D2, [key(1)], pack="p-fast")  # the same piece, committed first
    mine = packed(key(1), "p-slow", 0)
    assert a.commit_blob("slow", D1, 100, [(key(1), 100)], {key(1): mine}, None)
    assert a.locations([key(1)])[key(1)].pack == "p-fast"
    assert refs(a) == {key(1): 2}
    trashed = [(p, o, n) for _, p, o, n in a.trash()]
    assert ("p-slow", 0, 100) in trashed or ("p-slow", None, None) in trashed


def test_of_concurrent_commits_of_one_digest_exactly_one_is_new(opener: Opener) -> None:
    handles = [opener() for _ in range(4)]
    results: list[bool] = []
    start = threading.Barrier(len(handles) * 2)

    def run(h: Metadata, n: int) -> None:
        h.create_ingest(f"ing{n}", "sha256")
        start.wait()
        results.append(h.commit_blob(f"ing{n}", D1, 10, [(key(1), 10)], {key(1): inline(key(1))}, None))

    threads = [threading.Thread(target=run, args=(h, i * 2 + j))
               for i, h in enumerate(handles) for j in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert refs(handles[0]) == {key(1): 1}
    assert handles[0].list_ingests() == []


# -- links -------------------------------------------------------------------------------


def test_links(meta: Metadata) -> None:
    commit(meta, D1, [key(1)])
    commit(meta, D2, [key(2)])
    assert not meta.link("repo/a", "sha256:" + "9" * 64)
    assert meta.link("repo/b", D1) and meta.link("repo/a", D1) and meta.link("repo/a", D1)
    assert meta.holders(D1) == ["repo/a", "repo/b"]
    assert meta.is_linked("repo/a", D1) and not meta.is_linked("repo/a", D2)
    assert meta.link_all("repo/a", [D2, D1, D2]) == [D2]
    assert meta.linked("repo/a") == sorted([D1, D2])
    assert meta.unlink("repo/a", D2) and not meta.unlink("repo/a", D2)
    assert meta.linked("repo/a") == [D1]


def test_link_all_links_all_or_nothing(meta: Metadata) -> None:
    commit(meta, D1, [key(1)])
    assert meta.link_all("repo/a", [D1, D2]) is None
    assert meta.linked("repo/a") == []


def test_unlink_stale_takes_only_links_last_made_before_the_cutoff(opener: Opener) -> None:
    first, second = opener(), opener()
    commit(first, D1, [key(1)], link="repo/a")
    commit(first, D2, [key(2)])
    assert first.link("repo/a", D2) and first.link("repo/b", D2)
    cutoff = time.time() + 1
    assert second.unlink_stale("repo/a", [D1, D2], time.time() - 3600) == []  # all young
    # Made again after the cutoff: a fresh link, whatever it was before.
    time.sleep(0.01)
    young = time.time()  # D1's link is older; D2's, made next, is younger
    time.sleep(0.01)
    assert first.link_all("repo/a", [D2]) == []
    assert second.unlink_stale("repo/a", [D1, D2, D2], young) == [D1]
    assert first.linked("repo/a") == [D2] and first.holders(D2) == ["repo/a", "repo/b"]
    assert second.unlink_stale("repo/a", [D2], cutoff) == [D2]
    assert first.linked("repo/a") == [] and first.is_linked("repo/b", D2)


def test_delete_blob_removes_it_and_its_links_and_releases_its_pieces(meta: Metadata) -> None:
    commit(meta, D1, [key(1), key(2)], link="repo/a")
    commit(meta, D2, [key(2)])
    assert meta.delete_blob(D1)
    assert not meta.delete_blob(D1)
    assert meta.blob(D1) is None
    assert meta.holders(D1) == [] and meta.dangling_links() == []
    assert refs(meta) == {key(1): 0, key(2): 1}  # the pieces stay until collect_pieces


# -- maintenance ---------------------------------------------------------------------------


def test_collect_blobs_takes_unlinked_blobs_older_than_the_cutoff_in_batches(meta: Metadata) -> None:
    commit(meta, D1, [key(1)], link="repo/a")
    for n in range(3, 8):
        commit(meta, f"sha256:{n:064x}", [key(n)])
    cutoff = time.time() + 1
    assert meta.collect_blobs(time.time() - 3600) == 0  # all too young
    assert meta.collect_blobs(cutoff, batch=2) == 2
    assert meta.collect_blobs(cutoff, batch=2) == 2
    assert meta.collect_blobs(cutoff, batch=2) == 1
    assert meta.collect_blobs(cutoff) == 0
    assert [d for d, _, _ in meta.iter_blobs()] == [D1]


def test_unlinked_since_counts_what_the_cutoff_keeps(meta: Metadata) -> None:
    before = time.time() - 1
    commit(meta, D1, [key(1)], link="repo/a")  # linked: not counted
    commit(meta, D2, [key(2)])
    size = meta.blob(D2)[0]  # type: ignore[index]
    assert meta.unlinked_since(before) == (1, size)
    assert meta.unlinked_since(time.time() + 60) == (0, 0)  # all older than that cutoff
    meta.unlink("repo/a", D1)
    assert meta.unlinked_since(before) == (2, size + meta.blob(D1)[0])  # type: ignore[index]


def test_collect_pieces_trashes_dead_ranges_and_dead_packs(meta: Metadata) -> None:
    commit(meta, D1, [key(1), key(2)], pack="p1")
    commit(meta, D2, [key(2), key(3)], pack="p2")
    meta.delete_blob(D2)
    assert meta.collect_pieces() == (1, 100)  # key(3); key(2) is still D1's
    # D2's copy of key(2) went at its commit, key(3) now, and then the empty pack.
    assert {(p, o, n) for _, p, o, n in meta.trash()} == {
        ("p2", 0, 100), ("p2", 100, 100), ("p2", None, None)}
    assert meta.pack_live() == {"p1": 200}
    assert not meta.is_pack_known("p2")
    meta.delete_blob(D1)
    assert meta.collect_pieces(batch=1) == (1, 100)
    assert meta.collect_pieces(batch=1) == (1, 100)
    assert meta.collect_pieces() == (0, 0)
    trashed = {(p, o, n) for _, p, o, n in meta.trash()}
    assert {("p1", None, None)} <= trashed  # a pack with nothing live goes whole
    assert not meta.is_pack_known("p1")


def test_collect_pieces_spares_a_pack_an_open_ingest_still_writes(meta: Metadata) -> None:
    meta.create_ingest("ing", "sha256")
    meta.set_ingest_pack("ing", "p1")
    assert meta.collect_pieces() == (0, 0)
    assert meta.is_pack_known("p1")


def test_trash_stays_until_forgotten(opener: Opener) -> None:
    a, b = opener(), opener()
    for n in range(3):
        a.create_ingest(f"ing{n}", "sha256")
        a.set_ingest_pack(f"ing{n}", f"p{n}")
        a.drop_ingest(f"ing{n}")
    entries = a.trash()
    assert [p for _, p, _, _ in entries] == ["p0", "p1", "p2"]  # oldest first
    assert b.trash(limit=2) == entries[:2]
    a.forget_trash([entries[0][0]])
    assert b.trash() == entries[1:]
    b.forget_trash([e[0] for e in entries] + [10**9])
    assert a.trash() == []


def test_stats_count_as_of_one_moment(meta: Metadata) -> None:
    commit(meta, D1, [key(1), key(2)], pack="p1", link="repo/a")
    commit(meta, D2, [key(2)], pack="p2")
    meta.create_ingest("open", "sha256")
    s = meta.stats()
    assert {k: s[k] for k in ("blobs", "logical_bytes", "pieces", "physical_bytes",
                              "unique_bytes", "open_ingests", "links")} == {
        "blobs": 2, "logical_bytes": 300, "pieces": 2, "physical_bytes": 200,
        "unique_bytes": 200, "open_ingests": 1, "links": 1,
    }
    assert s["packs"] == len(meta.pack_names())
    assert meta.disk_bytes() >= 0


def test_iterators_list_everything_in_order(meta: Metadata) -> None:
    digests = sorted(f"sha256:{n:064x}" for n in range(700))
    for n, d in enumerate(digests):
        commit(meta, d, [key(n)], ingest=f"i{n}")
    assert [d for d, _, _ in meta.iter_blobs()] == digests
    keys = [loc.key for loc, _ in meta.iter_pieces()]
    assert keys == sorted(key(n) for n in range(700))
    assert {r for _, r in meta.iter_pieces()} == {1}


def test_a_snapshot_sees_one_moment_while_others_write(opener: Opener) -> None:
    a, b = opener(), opener()
    commit(a, D1, [key(1)], link="repo/a")
    with a.snapshot() as view:
        commit(b, D2, [key(2)])
        b.unlink("repo/a", D1)
        assert [d for d, _, _ in view.iter_blobs()] == [D1]
        assert [loc.key for loc, _ in view.iter_pieces()] == [key(1)]
        assert view.dangling_links() == []
        assert view.list_ingests() == []
    assert [d for d, _, _ in a.iter_blobs()] == [D1, D2]


def test_sqlite_links_of_a_store_made_before_link_times_count_as_old(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "meta.db")
    old.executescript(
        "CREATE TABLE links(holder TEXT NOT NULL, digest TEXT NOT NULL,"
        " PRIMARY KEY(holder, digest)) WITHOUT ROWID;"
    )
    old.execute("INSERT INTO links VALUES ('repo/a', ?)", (D1,))
    old.commit()
    old.close()
    meta = SqliteMetadata(tmp_path / "meta.db")
    again = SqliteMetadata(tmp_path / "meta.db")  # a second opener finds the column there
    try:
        commit(meta, D1, [key(1)])
        commit(meta, D2, [key(2)], link="repo/a")
        assert meta.unlink_stale("repo/a", [D1, D2], time.time() - 3600) == [D1]
        assert again.linked("repo/a") == [D2]
    finally:
        meta.close()
        again.close()
