"""Kept SHA-256 states (cas.digest_states): a blob assembled from pieces that begin as a
committed blob's hashes only from the last state inside them; a wrong claim or a damaged
state never commits wrong bytes nor fails a right blob."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import blake3
import pytest

from cas import Digest, DigestMismatch, Store, StoreConfig, open_store
from cas import ingest_assembly as assembly
from cas.digest_states import STEP, Sha256, available, load_state, save_states
from cas.prehash import RESUME_BASES

pytestmark = pytest.mark.skipif(not available(), reason="no libcrypto with SHA256_Init")


def _sha(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


@pytest.fixture
async def kept(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(StoreConfig(tmp_path / "store", digest_states=True))
    yield s
    await s.close()


def _assert_right_states(store: Store, blob: bytes) -> None:
    """The states kept for ``blob`` are those of its bytes, every one."""
    whole = Sha256()
    whole.update(blob)
    assert load_state(store.root, _sha(blob).encoded, len(blob)) == (
        len(blob) // STEP * STEP, whole.states[-1], whole.states)


def _spy_hashed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """[bytes of held pieces read for digests, digests computed again in full], from now on."""
    hashed = [0, 0]
    real, rehash = assembly.hash_locations, assembly.IngestAssembly._rehash

    def spy(core: Any, hasher: Any, locs: Any) -> None:
        hashed[0] += sum(loc.length for loc in locs)
        real(core, hasher, locs)

    def spy_rehash(self: Any, algorithm: str) -> Digest:
        hashed[1] += 1
        return rehash(self, algorithm)

    monkeypatch.setattr(assembly, "hash_locations", spy)
    monkeypatch.setattr(assembly.IngestAssembly, "_rehash", spy_rehash)
    return hashed


def test_states_resume_the_digest_anywhere_on_a_step() -> None:
    data = os.urandom(5 * 4096 + 77)
    whole = Sha256(step=4096)
    for i in range(0, len(data), 1000):  # updates across the steps
        whole.update(memoryview(data)[i:i + 1000])
    assert whole.hexdigest() == hashlib.sha256(data).hexdigest()
    assert whole.hexdigest() == whole.hexdigest()  # reading it ends nothing
    assert len(whole.states) == 5
    for n, state in enumerate(whole.states, 1):
        resumed = Sha256(step=4096, offset=n * 4096, state=state, before=whole.states[:n])
        resumed.update(data[n * 4096:])
        assert resumed.hexdigest() == whole.hexdigest()
        assert resumed.states == whole.states
    with pytest.raises(ValueError):
        Sha256(step=4096, offset=100, state=whole.states[0])


def test_a_damaged_state_file_is_ignored(tmp_path: Path) -> None:
    h = Sha256()
    h.update(os.urandom(3 * STEP))
    save_states(tmp_path, "ab" * 32, h.states)
    offset, state, before = load_state(tmp_path, "ab" * 32, 2 * STEP + 5) or (0, b"", [])
    assert (offset, state, before) == (2 * STEP, h.states[1], h.states[:2])
    assert load_state(tmp_path, "ab" * 32, STEP - 1) is None  # nothing that early
    assert load_state(tmp_path, "cd" * 32, STEP) is None  # none kept
    path = tmp_path / "states" / ("ab" * 32)
    raw = bytearray(path.read_bytes())
    raw[20] ^= 1
    path.write_bytes(raw)
    assert load_state(tmp_path, "ab" * 32, 3 * STEP) is None
    path.write_bytes(raw[:40])
    assert load_state(tmp_path, "ab" * 32, 3 * STEP) is None


async def _old(store: Store, size: int = 5 * STEP + 1234) -> tuple[bytes, list[tuple[str, int, int]]]:
    data = os.urandom(size)
    await store.put(data, expected=_sha(data))
    recipe = await store.recipe(_sha(data))
    return data, [(p.key, p.offset, p.length) for p in recipe.pieces]


def _prefix(pieces: list[tuple[str, int, int]], at: int) -> int:
    """How many of the pieces end at or before byte ``at``."""
    return sum(1 for _, off, n in pieces if off + n <= at)


async def test_a_blob_that_begins_as_another_hashes_from_its_state(
    kept: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, pieces = await _old(kept)
    assert (kept.root / "states" / _sha(data).encoded).exists()
    n = _prefix(pieces, 3 * STEP + 100)
    shared = pieces[n - 1][1] + pieces[n - 1][2]
    fresh = os.urandom(300_000)
    blob = data[:shared] + fresh + data[shared:]
    hashed = _spy_hashed(monkeypatch)
    ing = await kept.begin_ingest()
    assert await ing.hash_from(_sha(data), shared) == shared // STEP * STEP
    await ing.reuse_pieces([(k, ln) for k, _, ln in pieces[:n]])
    await ing.append_pieces([fresh])
    await ing.reuse_pieces([(k, ln) for k, _, ln in pieces[n:]])
    info = await ing.commit(_sha(blob), size=len(blob))
    assert info.digest == _sha(blob)
    assert await kept.read_bytes(info.digest) == blob
    # Held pieces were read from the state's offset on only, and only once.
    assert hashed[0] <= len(data) - shared // STEP * STEP
    assert hashed[1] == 0
    # The new blob's states are kept too, all of them right.
    _assert_right_states(kept, blob)
    assert (await kept.fsck()).ok


async def test_a_wrong_claim_is_hashed_in_full(kept: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """hash_from names a blob the pieces do not begin as: the commit notices and hashes
    every byte; the right digest commits, a wrong one never does."""
    data, pieces = await _old(kept)
    hashed = _spy_hashed(monkeypatch)
    n = _prefix(pieces, 3 * STEP)
    blob = data[pieces[1][1]:]  # the same pieces but the first
    for expected, ok in ((_sha(data[:100] + blob), False), (_sha(blob), True)):
        ing = await kept.begin_ingest()
        assert await ing.hash_from(_sha(data), pieces[n][1]) >= STEP
        await ing.reuse_pieces([(k, ln) for k, _, ln in pieces[1:]])
        if ok:
            assert (await ing.commit(expected, size=len(blob))).digest == expected
        else:
            with pytest.raises(DigestMismatch):
                await ing.commit(expected, size=len(blob))
            assert await kept.stat(expected) is None
    assert hashed[1] == 2
    assert await kept.read_bytes(_sha(blob)) == blob


async def test_nothing_expected_is_hashed_in_full(kept: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    data, pieces = await _old(kept)
    hashed = _spy_hashed(monkeypatch)
    ing = await kept.begin_ingest()
    assert await ing.hash_from(_sha(data), len(data)) == len(data) // STEP * STEP
    await ing.reuse_pieces([(k, ln) for k, _, ln in pieces])
    assert (await ing.commit()).digest == _sha(data)
    assert hashed[1] == 1


async def test_a_wrong_state_costs_time_not_a_wrong_answer(kept: Store) -> None:
    """A state file that is whole but wrong (its checksum right): the right blob still
    commits (hashed again in full), a hostile digest still fails."""
    data, pieces = await _old(kept)
    bogus = Sha256()
    bogus.update(os.urandom(5 * STEP))
    save_states(kept.root, _sha(data).encoded, bogus.states)
    n = _prefix(pieces, 4 * STEP)
    fresh = os.urandom(1000)
    shared = pieces[n][1]
    blob = data[:shared] + fresh
    for expected in (_sha(blob[:-1] + b"x"), _sha(blob)):
        ing = await kept.begin_ingest()
        assert await ing.hash_from(_sha(data), shared) >= STEP
        await ing.reuse_pieces([(k, ln) for k, _, ln in pieces[:n]])
        await ing.append_pieces([fresh])
        if expected == _sha(blob):
            assert (await ing.commit(expected, size=len(blob))).digest == expected
        else:
            with pytest.raises(DigestMismatch):
                await ing.commit(expected, size=len(blob))
    assert await kept.read_bytes(_sha(blob)) == blob
    _assert_right_states(kept, blob)  # computed again


async def test_a_store_without_states_hashes_everything(store: Store) -> None:
    data, pieces = await _old(store)
    assert not (store.root / "states").exists()
    ing = await store.begin_ingest()
    assert await ing.hash_from(_sha(data), len(data)) == 0
    await ing.reuse_pieces([(k, ln) for k, _, ln in pieces])
    assert (await ing.commit(_sha(data))).digest == _sha(data)


async def test_gc_removes_the_states_of_blobs_it_removes(kept: Store) -> None:
    gone, _ = await _old(kept)
    stays, _ = await _old(kept)
    await kept.link("keep", _sha(stays))
    (kept.root / "states" / ".half-made.tmp").write_bytes(b"x")
    await kept.gc(grace=0)
    assert await kept.stat(_sha(gone)) is None
    assert sorted(os.listdir(kept.root / "states")) == [_sha(stays).encoded]


# --- piece-level pushes (cas.assemble.PieceIngest) ---------------------------------------

def _spy_piece_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """[bytes of pieces read by a piece ingest for digests (whole runs and parts of a
    piece), from now on]."""
    import cas.assemble as assemble
    import cas.prehash as prehash

    read = [0]
    real_hash, real_feed = assemble.hash_locations, assemble.feed

    def spy_hash(core: Any, hasher: Any, locs: Any) -> None:
        read[0] += sum(loc.length for loc in locs)
        real_hash(core, hasher, locs)

    def spy_feed(core: Any, hasher: Any, locs: Any, skip: int = 0) -> None:
        if skip and locs:
            read[0] += locs[0].length - skip
        real_feed(core, hasher, locs, skip)

    monkeypatch.setattr(assemble, "hash_locations", spy_hash)
    monkeypatch.setattr(prehash, "hash_locations", spy_hash)
    monkeypatch.setattr(assemble, "feed", spy_feed)
    return read


async def _until(cond: Any) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def _next_version(store: Store, at: int) -> tuple[bytes, list[tuple[str, int, int]], bytes,
                                                         list[tuple[str, int]], int]:
    """A committed blob, and its next version: its pieces up to about byte ``at``, one new
    piece, then the rest. Returns (old, old pieces, new, new recipe, bytes shared)."""
    data, pieces = await _old(store)
    n = _prefix(pieces, at)
    shared = pieces[n - 1][1] + pieces[n - 1][2]
    fresh = os.urandom(200_000)
    blob = data[:shared] + fresh + data[shared:]
    recipe = [(k, ln) for k, _, ln in pieces[:n]]
    recipe += [(blake3.blake3(fresh).hexdigest(), len(fresh))]
    recipe += [(k, ln) for k, _, ln in pieces[n:]]
    return data, pieces, blob, recipe, shared


async def _piece_push(store: Store, old: bytes, pieces: list[tuple[str, int, int]], blob: bytes,
                      recipe: list[tuple[str, int]], shared: int,
                      others: list[Digest] | None = None) -> Any:
    """A piece ingest of ``blob``: its one new piece received, its plan expected with the
    old blob's pieces and the old blob as base (after ``others``), hashed ahead as far
    as it goes."""
    fresh = blob[shared:shared + 200_000]
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(fresh).hexdigest(), fresh)])
    await ing.expect(recipe, {k for k, _, _ in pieces}, [*(others or []), _sha(old)])
    await _until(lambda: ing.hashed_ahead == len(recipe))
    return ing


async def test_a_piece_push_that_begins_as_a_kept_blob_hashes_from_its_state(
    kept: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, pieces, blob, recipe, shared = await _next_version(kept, 4 * STEP)
    read = _spy_piece_reads(monkeypatch)
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared)
    assert ing.resumed_offset == shared // STEP * STEP >= 2 * STEP
    info = await ing.commit_recipe(_sha(blob), recipe, known={k for k, _, _ in pieces},
                                   link="repository:b")
    assert info.digest == _sha(blob)
    assert await kept.read_bytes(info.digest) == blob
    # Only the bytes after the state were read, once; nothing was hashed again.
    assert read[0] == len(blob) - ing.resumed_offset
    assert ing.rehashed == 0
    # The new blob's states are kept, all of them right.
    _assert_right_states(kept, blob)
    assert (await kept.fsck()).ok


async def test_a_piece_push_with_a_damaged_state_hashes_everything(
    kept: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, pieces, blob, recipe, shared = await _next_version(kept, 4 * STEP)
    path = kept.root / "states" / _sha(old).encoded
    raw = bytearray(path.read_bytes())
    raw[40] ^= 1
    path.write_bytes(raw)
    read = _spy_piece_reads(monkeypatch)
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared)
    assert ing.resumed_offset == 0
    info = await ing.commit_recipe(_sha(blob), recipe, known={k for k, _, _ in pieces})
    assert info.digest == _sha(blob)
    assert await kept.read_bytes(info.digest) == blob
    assert read[0] == len(blob)  # every byte


async def test_a_piece_push_with_a_wrong_state_still_commits_the_right_blob(
    kept: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A state file that is whole but wrong (its checksum right): the resumed digest
    comes out wrong, the blob is hashed again from every piece, and commits; a wrong
    expected digest still aborts."""
    old, pieces, blob, recipe, shared = await _next_version(kept, 4 * STEP)
    bogus = Sha256()
    bogus.update(os.urandom(5 * STEP))
    save_states(kept.root, _sha(old).encoded, bogus.states)
    known = {k for k, _, _ in pieces}
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared)
    assert ing.resumed_offset == shared // STEP * STEP >= 2 * STEP
    with pytest.raises(DigestMismatch):
        await ing.commit_recipe(_sha(blob[:-1] + b"x"), recipe, known=known, link="repository:x")
    assert ing.closed and ing.rehashed == 1
    assert await kept.stat(_sha(blob)) is None
    assert await kept.linked("repository:x") == []
    read = _spy_piece_reads(monkeypatch)
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared)
    assert ing.resumed_offset == shared // STEP * STEP >= 2 * STEP
    info = await ing.commit_recipe(_sha(blob), recipe, known=known)
    assert info.digest == _sha(blob) and ing.rehashed == 1
    assert read[0] == (len(blob) - ing.resumed_offset) + len(blob)  # after the state, then all
    assert await kept.read_bytes(_sha(blob)) == blob
    _assert_right_states(kept, blob)


async def test_a_wrong_digest_after_a_resumed_piece_hash_aborts(kept: Store) -> None:
    old, pieces, blob, recipe, shared = await _next_version(kept, 4 * STEP)
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared)
    assert ing.resumed_offset == shared // STEP * STEP >= 2 * STEP
    with pytest.raises(DigestMismatch):
        await ing.commit_recipe(_sha(old), recipe, known={k for k, _, _ in pieces})
    assert ing.closed and ing.rehashed == 1
    assert await kept.stat(_sha(blob)) is None
    assert not (kept.root / "states" / _sha(blob).encoded).exists()


async def test_piece_pushed_blobs_keep_states_and_only_a_shared_prefix_resumes(
    kept: Store,
) -> None:
    data = os.urandom(3 * STEP + 999)
    cut = _recipe_of(data, 300_000)
    ing = await kept.begin_piece_ingest()
    await ing.add_pieces([(k, data[off:off + n]) for k, off, n in cut])
    info = await ing.commit_recipe(_sha(data), [(k, n) for k, _, n in cut])
    assert info.digest == _sha(data)
    _assert_right_states(kept, data)
    # A plan that does not begin as the base (its first piece differs) starts from nothing,
    # though the base's pieces are vouched for and its states kept.
    other = os.urandom(1000) + data[cut[0][2]:]
    recipe = [(blake3.blake3(other[:1000]).hexdigest(), 1000), *((k, n) for k, _, n in cut[1:])]
    ing = await kept.begin_piece_ingest()
    await ing.add_pieces([(recipe[0][0], other[:1000])])
    await ing.expect(recipe, {k for k, _, _ in cut}, [info.digest])
    await _until(lambda: ing.hashed_ahead == len(recipe))
    assert ing.resumed_offset == 0
    assert (await ing.commit_recipe(_sha(other), recipe, known={k for k, _, _ in cut})
            ).digest == _sha(other)


def _recipe_of(data: bytes, size: int) -> list[tuple[str, int, int]]:
    return [(blake3.blake3(data[off:off + size]).hexdigest(), off, len(data[off:off + size]))
            for off in range(0, len(data), size)]


async def test_a_resume_looks_at_the_first_bases_a_plan_names_only(kept: Store) -> None:
    old, pieces, blob, recipe, shared = await _next_version(kept, 4 * STEP)
    strangers = [_sha(os.urandom(64)) for _ in range(RESUME_BASES)]
    # The base that holds the state comes right after the bases looked at: not used ...
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared, strangers)
    assert ing.resumed_offset == 0
    assert (await ing.commit_recipe(_sha(blob), recipe,
                                    known={k for k, _, _ in pieces})).digest == _sha(blob)
    # ... and one place earlier, it is.
    old, pieces, blob, recipe, shared = await _next_version(kept, 4 * STEP)
    ing = await _piece_push(kept, old, pieces, blob, recipe, shared, strangers[1:])
    assert ing.resumed_offset == shared // STEP * STEP >= 2 * STEP
