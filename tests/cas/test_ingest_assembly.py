"""An ingest assembled from whole pieces (``append_pieces``/``reuse_pieces``): the recipe
is the one given, not re-cut; the digest is still verified over every byte."""

from __future__ import annotations

import hashlib
import os

import blake3
import pytest

from cas import Digest, DigestMismatch, PieceMissing, SizeMismatch, Store


def _sha(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def _key(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


async def _old_blob(store: Store, size: int = 3 << 20) -> tuple[bytes, list[tuple[str, int, bytes]]]:
    """A committed blob and its pieces (key, length, bytes) as the store cut them."""
    data = os.urandom(size)
    await store.put(data, expected=_sha(data))
    recipe = await store.recipe(_sha(data))
    return data, [(p.key, p.length, data[p.offset:p.offset + p.length]) for p in recipe.pieces]


async def test_assembled_blob_keeps_the_given_recipe_and_its_bytes(store: Store) -> None:
    _, old = await _old_blob(store)
    fresh = [os.urandom(1000), os.urandom(70_000)]  # pieces the cutter would never make
    ing = await store.begin_ingest()
    await ing.reuse_pieces([(k, n) for k, n, _ in old[:2]])
    await ing.append_pieces([fresh[0]])
    await ing.reuse_pieces([(old[2][0], old[2][1]), (old[0][0], old[0][1])])  # a repeat
    await ing.append_pieces([fresh[1]])
    blob = old[0][2] + old[1][2] + fresh[0] + old[2][2] + old[0][2] + fresh[1]
    info = await ing.commit(_sha(blob), size=len(blob))
    assert info.digest == _sha(blob)
    assert await store.read_bytes(info.digest) == blob
    recipe = await store.recipe(info.digest)
    assert [(p.key, p.length) for p in recipe.pieces] == [
        (old[0][0], old[0][1]), (old[1][0], old[1][1]), (_key(fresh[0]), 1000),
        (old[2][0], old[2][1]), (old[0][0], old[0][1]), (_key(fresh[1]), 70_000)]
    report = await store.fsck()
    assert report.ok, report


async def test_assembled_blob_with_a_wrong_digest_is_never_committed(store: Store) -> None:
    _, old = await _old_blob(store)
    fresh = os.urandom(50_000)
    ing = await store.begin_ingest()
    await ing.reuse_pieces([(k, n) for k, n, _ in old[:1]])
    await ing.append_pieces([fresh])
    claimed = old[0][2] + os.urandom(50_000)  # what a hostile recipe says the blob is
    with pytest.raises(DigestMismatch):
        await ing.commit(_sha(claimed), size=len(claimed))
    assert await store.stat(_sha(claimed)) is None
    assert await store.stat(_sha(old[0][2] + fresh)) is None
    assert _key(fresh) not in await store.has_pieces([_key(fresh)])  # dropped with the ingest


async def test_assembled_blob_of_the_wrong_size_is_never_committed(store: Store) -> None:
    _, old = await _old_blob(store)
    ing = await store.begin_ingest()
    await ing.reuse_pieces([(k, n) for k, n, _ in old[:2]])
    right = old[0][2] + old[1][2]
    with pytest.raises(SizeMismatch):
        await ing.commit(_sha(right), size=len(right) + 1)
    assert await store.stat(_sha(right)) is None


async def test_a_missing_piece_is_refused_and_the_ingest_goes_on(store: Store) -> None:
    _, old = await _old_blob(store)
    absent = os.urandom(40_000)
    ing = await store.begin_ingest()
    await ing.reuse_pieces([(old[0][0], old[0][1])])
    with pytest.raises(PieceMissing):
        await ing.reuse_pieces([(old[1][0], old[1][1]), (_key(absent), len(absent))])
    with pytest.raises(PieceMissing):  # a known piece with another length
        await ing.reuse_pieces([(old[1][0], old[1][1] + 1)])
    assert ing.offset == old[0][1]
    await ing.append_pieces([absent])  # the caller fetched it instead
    blob = old[0][2] + absent
    info = await ing.commit(_sha(blob), size=len(blob))
    assert await store.read_bytes(info.digest) == blob


async def test_an_ingest_is_cut_or_assembled_never_both(store: Store) -> None:
    _, old = await _old_blob(store)
    cut = await store.begin_ingest()
    await cut.write(b"x" * 100)
    with pytest.raises(ValueError, match="fed bytes"):
        await cut.append_pieces([b"y"])
    with pytest.raises(ValueError, match="fed bytes"):
        await cut.reuse_pieces([(old[0][0], old[0][1])])
    await cut.abort()
    assembled = await store.begin_ingest()
    await assembled.append_pieces([b"y" * 10])
    with pytest.raises(ValueError, match="assembled"):
        await assembled.write(b"x")
    with pytest.raises(ValueError, match="assembled"):
        await assembled.checkpoint()
    await assembled.abort()


async def test_a_piece_appended_earlier_can_be_reused_by_key(store: Store) -> None:
    fresh = os.urandom(70_000)  # large enough to go to the ingest's pack
    ing = await store.begin_ingest()
    await ing.append_pieces([fresh])
    await ing.reuse_pieces([(_key(fresh), len(fresh))])
    blob = fresh + fresh
    info = await ing.commit(_sha(blob), size=len(blob))
    assert await store.read_bytes(info.digest) == blob
    assert [p.key for p in (await store.recipe(info.digest)).pieces] == [_key(fresh)] * 2


async def test_pieces_held_by_the_blob_they_lie_in_outlive_its_other_holders(store: Store) -> None:
    # reuse_pieces(within=...): the ingest holds the old blob (one link) instead of each
    # piece; GC meanwhile keeps that blob, the commit lets it go.
    data, old = await _old_blob(store)
    await store.link("image:v1", _sha(data))
    fresh = os.urandom(50_000)
    ing = await store.begin_ingest()
    await ing.reuse_pieces([(k, n) for k, n, _ in old[:2]], within=[_sha(data)])
    assert await store.holders(_sha(data)) == ["image:v1", f"ingest:{ing.id}"]
    await store.unlink("image:v1", _sha(data))
    report = await store.gc(grace=0)
    assert report.blobs_removed == 0
    await ing.append_pieces([fresh])
    blob = old[0][2] + old[1][2] + fresh
    info = await ing.commit(_sha(blob), size=len(blob))
    assert await store.read_bytes(info.digest) == blob
    assert await store.holders(_sha(data)) == []
    report = await store.gc(grace=0)
    assert report.blobs_removed == 2  # the old blob, and the new one, linked by no one
    assert (await store.fsck()).ok


async def test_pieces_outside_the_blobs_named_are_held_one_by_one(store: Store) -> None:
    # A blob named in within that does not hold every piece (a stale plan): the pieces
    # are held one by one, as without it; an abort removes whatever was linked.
    a, old_a = await _old_blob(store)
    b, old_b = await _old_blob(store)
    await store.link("image:a", _sha(a))
    ing = await store.begin_ingest()
    await ing.reuse_pieces([(old_a[0][0], old_a[0][1]), (old_b[0][0], old_b[0][1])],
                           within=[_sha(a)])
    assert await store.holders(_sha(a)) == ["image:a"]
    await ing.reuse_pieces([(k, n) for k, n, _ in old_a[1:3]], within=[_sha(a), _sha(b)])
    assert f"ingest:{ing.id}" in await store.holders(_sha(b))
    await ing.abort()
    assert await store.holders(_sha(a)) == ["image:a"] and await store.holders(_sha(b)) == []
