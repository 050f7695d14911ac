"""Piece ingests (cas.assemble): a blob committed from whole pieces and a known recipe."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from cas import (
    Digest,
    DigestMismatch,
    IngestUnknown,
    PieceMismatch,
    PiecesMissing,
    RecipeInvalid,
    Store,
)


def _pieces(seed: int, n: int, size: int = 50_000) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(n)]


def _recipe(pieces: list[bytes]) -> list[tuple[str, int]]:
    return [(blake3.blake3(p).hexdigest(), len(p)) for p in pieces]


async def test_commit_from_received_and_known_pieces(store: Store) -> None:
    old_blob = b"".join(_pieces(1, 30))
    await store.put(old_blob, link="repository:a")
    cut = (await store.recipe(Digest.of(old_blob))).pieces
    assert len(cut) >= 3
    old = [old_blob[p.offset : p.offset + p.length] for p in cut]
    new = list(old)
    new[2] = b"changed" * 1000
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(new[2]).hexdigest(), new[2])])
    assert ing.offset == len(new[2])
    known = {k for k, _ in _recipe(old)}
    blob = b"".join(new)
    info = await ing.commit_recipe(Digest.of(blob), _recipe(new), known=known, link="repository:b")
    assert info.size == len(blob)
    assert await store.read_bytes(Digest.of(blob)) == blob
    assert await store.is_linked("repository:b", Digest.of(blob))
    recipe = await store.recipe(Digest.of(blob))
    assert [p.key for p in recipe.pieces] == [k for k, _ in _recipe(new)]
    assert (await store.fsck()).ok


async def test_unknown_pieces_are_missing_and_ingest_stays_open(store: Store) -> None:
    pieces = _pieces(2, 3)
    await store.put(b"".join(pieces))  # in the store, but not vouched for
    ing = await store.begin_piece_ingest()
    blob = b"".join(pieces)
    with pytest.raises(PiecesMissing) as err:
        await ing.commit_recipe(Digest.of(blob), _recipe(pieces))
    assert err.value.indices == [0, 1, 2]
    await ing.add_pieces([(k, p) for (k, _), p in zip(_recipe(pieces), pieces)])
    await ing.commit_recipe(Digest.of(blob), _recipe(pieces))
    assert await store.read_bytes(Digest.of(blob)) == blob


async def test_wrong_key_stores_nothing(store: Store) -> None:
    a, b = _pieces(3, 2)
    ing = await store.begin_piece_ingest()
    with pytest.raises(PieceMismatch):
        await ing.add_pieces([(blake3.blake3(a).hexdigest(), a), (blake3.blake3(a).hexdigest(), b)])
    assert ing.keys() == set() and ing.offset == 0
    await ing.add_pieces([(blake3.blake3(b).hexdigest(), b)])
    assert ing.keys() == {blake3.blake3(b).hexdigest()}


async def test_digest_mismatch_commits_nothing(store: Store) -> None:
    pieces = _pieces(4, 3)
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(k, p) for (k, _), p in zip(_recipe(pieces), pieces)])
    wrong = Digest.of(b"something else")
    with pytest.raises(DigestMismatch):
        await ing.commit_recipe(wrong, _recipe(pieces), link="repository:x")
    assert ing.closed
    assert await store.stat(wrong) is None
    assert await store.stat(Digest.of(b"".join(pieces))) is None
    assert await store.linked("repository:x") == []
    with pytest.raises(IngestUnknown):
        await ing.add_pieces([])
    assert await store.list_ingests() == []


async def test_wrong_length_in_recipe_is_refused(store: Store) -> None:
    (a,) = _pieces(5, 1)
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(a).hexdigest(), a)])
    with pytest.raises(RecipeInvalid):
        await ing.commit_recipe(Digest.of(a), [(blake3.blake3(a).hexdigest(), len(a) + 1)])
    assert not ing.closed


async def test_resume_after_reopen_keeps_received_pieces(tmp_path: Path) -> None:
    pieces = _pieces(6, 4)
    recipe = _recipe(pieces)
    store = await Store.open(tmp_path / "s")
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(recipe[0][0], pieces[0]), (recipe[1][0], pieces[1])])
    ingest_id = ing.id
    await store.close()
    store = await Store.open(tmp_path / "s")
    try:
        ing = await store.resume_piece_ingest(ingest_id)
        assert ing.keys() == {recipe[0][0], recipe[1][0]}
        assert ing.offset == len(pieces[0]) + len(pieces[1])
        await ing.add_pieces([(recipe[2][0], pieces[2]), (recipe[3][0], pieces[3])])
        blob = b"".join(pieces)
        await ing.commit_recipe(Digest.of(blob), recipe)
        assert await store.read_bytes(Digest.of(blob)) == blob
        assert (await store.fsck()).ok
    finally:
        await store.close()


async def test_gc_keeps_pieces_of_an_open_piece_ingest(store: Store) -> None:
    pieces = _pieces(7, 2)
    recipe = _recipe(pieces)
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(recipe[0][0], pieces[0])])
    await store.gc(grace=0)
    await ing.add_pieces([(recipe[1][0], pieces[1])])
    blob = b"".join(pieces)
    await ing.commit_recipe(Digest.of(blob), recipe)
    assert await store.read_bytes(Digest.of(blob)) == blob


# --- hashing ahead of the commit (PieceIngest.expect) ----------------------------------------

async def _until(cond: Callable[[], bool]) -> None:
    """Wait (polling: the hash runs on worker threads) until ``cond()`` holds."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Pieces hashed by each call of hash_locations, in order."""
    import cas.assemble as assemble

    calls: list[int] = []
    real = assemble.hash_locations

    def counted(core: Any, hasher: Any, locs: Any) -> None:
        calls.append(len(locs))
        real(core, hasher, locs)

    monkeypatch.setattr(assemble, "hash_locations", counted)
    return calls


async def _old_and_new(store: Store, seed: int) -> tuple[list[bytes], list[bytes]]:
    """The pieces of a committed blob (linked in repository:a) and of its next version,
    whose piece 1 is new."""
    old_blob = b"".join(_pieces(seed, 60))
    await store.put(old_blob, link="repository:a")
    cut = (await store.recipe(Digest.of(old_blob))).pieces
    assert len(cut) >= 3
    old = [old_blob[p.offset : p.offset + p.length] for p in cut]
    new = list(old)
    new[1] = b"changed %d " % seed * 2000
    return old, new


async def test_expected_recipe_is_hashed_as_pieces_arrive(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = await _old_and_new(store, 11)
    calls = _counting(monkeypatch)
    known = {k for k, _ in _recipe(old)}
    ing = await store.begin_piece_ingest()
    await ing.expect(_recipe(new), known)
    await _until(lambda: ing.hashed_ahead == 1)  # piece 0, then piece 1 is missing
    await asyncio.sleep(0.05)
    assert ing.hashed_ahead == 1
    await ing.add_pieces([(blake3.blake3(new[1]).hexdigest(), new[1])])
    await _until(lambda: ing.hashed_ahead == len(new))
    hashed = sum(calls)
    blob = b"".join(new)
    await ing.commit_recipe(Digest.of(blob), _recipe(new), known=known, link="repository:b")
    assert sum(calls) == hashed  # the commit read nothing more
    assert await store.read_bytes(Digest.of(blob)) == blob
    assert (await store.fsck()).ok


async def test_commit_before_the_hash_ahead_ends_hashes_the_rest(store: Store) -> None:
    old, new = await _old_and_new(store, 12)
    known = {k for k, _ in _recipe(old)}
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(new[1]).hexdigest(), new[1])])
    await ing.expect(_recipe(new), known)
    blob = b"".join(new)
    await ing.commit_recipe(Digest.of(blob), _recipe(new), known=known)
    assert await store.read_bytes(Digest.of(blob)) == blob


async def test_hash_ahead_never_commits_a_wrong_digest(store: Store) -> None:
    old, new = await _old_and_new(store, 13)
    known = {k for k, _ in _recipe(old)}
    ing = await store.begin_piece_ingest()
    await ing.expect(_recipe(new), known)
    await ing.add_pieces([(blake3.blake3(new[1]).hexdigest(), new[1])])
    await _until(lambda: ing.hashed_ahead == len(new))
    wrong = Digest.of(b"".join(old))  # a blob the store has, under another recipe
    with pytest.raises(DigestMismatch):
        await ing.commit_recipe(wrong, _recipe(new), known=known, link="repository:x")
    assert await store.linked("repository:x") == []
    assert await store.stat(Digest.of(b"".join(new))) is None


async def test_commit_of_another_recipe_hashes_anew(store: Store) -> None:
    old, new = await _old_and_new(store, 14)
    known = {k for k, _ in _recipe(old)}
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(new[1]).hexdigest(), new[1])])
    await ing.expect(_recipe(new), known)
    await _until(lambda: ing.hashed_ahead == len(new))
    other = [new[1], *old]  # the same pieces, another blob
    blob = b"".join(other)
    await ing.commit_recipe(Digest.of(blob), _recipe(other), known=known)
    assert await store.read_bytes(Digest.of(blob)) == blob


async def test_hash_ahead_follows_only_pieces_received_or_vouched_for(store: Store) -> None:
    _, new = await _old_and_new(store, 15)
    ing = await store.begin_piece_ingest()
    # Nothing vouched for: the store's pieces of repository:a are not read ahead, and
    # the commit refuses them as it would without the hash ahead.
    await ing.expect(_recipe(new))
    await ing.add_pieces([(blake3.blake3(new[1]).hexdigest(), new[1])])
    await asyncio.sleep(0.1)
    assert ing.hashed_ahead == 0
    with pytest.raises(PiecesMissing) as err:
        await ing.commit_recipe(Digest.of(b"".join(new)), _recipe(new))
    assert 1 not in err.value.indices and 0 in err.value.indices


async def test_hash_ahead_of_a_piece_gone_falls_back(store: Store) -> None:
    _, new = await _old_and_new(store, 16)
    ghost = b"never stored" * 100
    recipe = [*_recipe(new[:2]), _recipe([ghost])[0], *_recipe(new[2:])]
    known = {k for k, _ in recipe}  # vouched for, yet the store lacks the ghost
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(new[1]).hexdigest(), new[1])])
    await ing.expect(recipe, known)
    await asyncio.sleep(0.1)
    assert ing.hashed_ahead == 0  # failed at the ghost: of no use
    await ing.add_pieces([(recipe[2][0], ghost)])
    blob = b"".join([*new[:2], ghost, *new[2:]])
    await ing.commit_recipe(Digest.of(blob), recipe, known=known)
    assert await store.read_bytes(Digest.of(blob)) == blob


async def test_abort_ends_the_hash_ahead(store: Store) -> None:
    old, new = await _old_and_new(store, 17)
    ing = await store.begin_piece_ingest()
    await ing.expect(_recipe(new), {k for k, _ in _recipe(old)})
    await ing.abort()
    assert ing.closed
    assert await store.list_ingests() == []


def _split(blob: bytes, lengths: list[int]) -> list[bytes]:
    out, pos = [], 0
    for n in lengths:
        out.append(blob[pos : pos + n])
        pos += n
    return out


async def _commit_cut(store: Store, parts: list[bytes], link: str | None = None) -> Any:
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(p).hexdigest(), p) for p in parts])
    return await ing.commit_recipe(Digest.of(b"".join(parts)), _recipe(parts), link=link)


async def test_a_commit_of_a_blob_the_store_keeps_cut_otherwise_tells_its_own_cut(
    store: Store,
) -> None:
    blob = b"".join(_pieces(40, 6))
    thirds = _split(blob, [100_000] * 3)
    assert (await _commit_cut(store, thirds)).own_recipe is None  # a new blob: the store's
    halves = _split(blob, [150_000] * 2)
    assert (await _commit_cut(store, halves)).own_recipe == tuple(_recipe(halves))
    assert (await _commit_cut(store, thirds)).own_recipe is None  # the store's own cut
    stored = (await store.recipe(Digest.of(blob))).pieces
    assert [(p.key, p.length) for p in stored] == _recipe(thirds)  # the first commit's
    # An ordinary ingest tells the chunker's cut, a recipe of the same bytes.
    ing = await store.begin_ingest()
    await ing.write(blob)
    own = (await ing.commit(Digest.of(blob))).own_recipe
    assert own is not None and list(own) != _recipe(thirds)
    assert tuple((blake3.blake3(p).hexdigest(), len(p))
                 for p in _split(blob, [n for _, n in own])) == own


async def test_known_pieces_the_store_keeps_only_inside_a_blob_are_read_from_it(
    store: Store,
) -> None:
    """A repository's own recipe of a blob (halves) names pieces the store does not hold
    (it keeps the blob in thirds): a commit that vouches for them with their ranges reads
    them from the blob, and answers as if they were held."""
    blob = b"".join(_pieces(41, 6))
    digest = Digest.of(blob)
    await _commit_cut(store, _split(blob, [100_000] * 3), link="repository:a")
    halves = _split(blob, [150_000] * 2)
    assert not await store.has_pieces(k for k, _ in _recipe(halves))
    ranges = {key: (digest, i * 150_000, n) for i, (key, n) in enumerate(_recipe(halves))}
    extra = b"new" * 20_000
    v2 = [*halves, extra]
    ing = await store.begin_piece_ingest()
    await ing.add_pieces([(blake3.blake3(extra).hexdigest(), extra)])
    # Every check is made first: a wrong length stores nothing of the ranges.
    wrong = [(_recipe(halves)[0][0], 149_999), *_recipe(v2)[1:]]
    with pytest.raises(RecipeInvalid, match="is 150000 bytes, the recipe says 149999"):
        await ing.commit_recipe(Digest.of(b"".join(v2)), wrong,
                                known=set(ranges), ranges=ranges)
    assert ing.keys() == {blake3.blake3(extra).hexdigest()} and ing.offset == len(extra)
    info = await ing.commit_recipe(Digest.of(b"".join(v2)), _recipe(v2), known=set(ranges),
                                   ranges=ranges, link="repository:b")
    assert ing.offset == len(extra)  # bytes received: not those read from the blob
    assert await store.read_bytes(info.digest) == b"".join(v2)
    assert [(p.key, p.length) for p in (await store.recipe(info.digest)).pieces] == _recipe(v2)
    assert (await store.fsck()).ok
