"""A shared store (metadata in PostgreSQL, packs in S3 on a RADOS Gateway) opened from
storage directories of its own, as replicas open it: an open ingest's checkpoint (its
pieces, its pack, its tail) lives in shared storage, so any of them resumes it, and the
packs' location is found through the metadata. The single-node store keeps tail files."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cas import Digest, StoreConfig
from cas.errors import StoreCorrupt
from cas.open import open_store
from cas.s3_location import S3Location, S3LocationError
from testkit.postgres import PostgresServer


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.create_database(f"shared_{uuid.uuid4().hex[:12]}")


def _config(root: Path, database: str, s3: S3Location | None) -> StoreConfig:
    return StoreConfig.at(root, database=database, migrate=True).with_packs_in(s3)


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "ingests").iterdir())


async def test_an_ingest_goes_on_in_another_directory_from_its_last_checkpoint(
        database: str, s3_location: S3Location, tmp_path: Path) -> None:
    data = os.urandom(7 << 20)
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    async with await open_store(_config(a_root, database, s3_location)) as a, \
            await open_store(_config(b_root, database, s3_location)) as b:
        assert a.core.tail_keeper is not None and b.core.tail_keeper is not None
        ing = await a.begin_ingest()
        await ing.write(data[: 2_500_000])  # pieces in the pack, and a tail
        await ing.park()
        # B goes on where A checkpointed; bytes past B's last checkpoint are lost with it.
        on_b = await b.resume_ingest(ing.id)
        assert on_b.offset == 2_500_000
        await on_b.write(data[2_500_000 : 4_000_000])
        await on_b.checkpoint()
        await on_b.write(b"never checkpointed")
        await on_b._quiesce()
        # A's own copy is stale: it resumes afresh, from B's checkpoint.
        again = await a.resume_ingest(ing.id)
        assert again.offset == 4_000_000
        await again.write(data[4_000_000 : 5_000_123])
        await again.park()
        last = await b.resume_ingest(ing.id)
        assert last.offset == 5_000_123
        await last.write(data[5_000_123:])
        info = await last.commit(Digest.of(data))
        assert info.size == len(data)
        assert await a.read_bytes(Digest.of(data)) == data
        assert _files(a_root) == _files(b_root) == []  # no tail file on either side
        assert (await a.stats()).open_ingests == 0
        fsck = await a.fsck()
        assert fsck.ok, fsck.problems


async def test_a_blob_sent_whole_to_one_replica_and_committed_on_another_is_one_object(
        database: str, s3_location: S3Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docker's push through a round-robin balancer: the PATCH with every byte on A (which
    # parks the upload), the PUT without a body on B. A sealed its tail with the pieces,
    # so B checks that those bytes are the blob's last pieces and records them there.
    async with await open_store(_config(tmp_path / "a", database, s3_location)) as a, \
            await open_store(_config(tmp_path / "b", database, s3_location)) as b:

        async def patch_on_a_put_on_b(data: bytes) -> Digest:
            ing = await a.begin_ingest()
            await ing.write(data)
            await ing.park()
            on_b = await b.resume_ingest(ing.id)
            digest = (await on_b.commit(Digest.of(data))).digest
            assert await b.read_bytes(digest) == data
            return digest

        assert await b.redirect_url(await patch_on_a_put_on_b(os.urandom(3 << 20))) is not None  # one object
        # A checkpoint that did not seal its tail (as before this was done): the bytes
        # before the pack's end are other pieces', so B writes the tail as usual.
        with monkeypatch.context() as m:
            m.setattr(a.core, "remote", None)
            digest = await patch_on_a_put_on_b(os.urandom(3 << 20))
        assert await b.redirect_url(digest) is None  # two objects: streamed
        fsck = await a.fsck()
        assert fsck.ok, fsck.problems


async def test_a_dropped_ingest_takes_its_tail_with_it(
        database: str, s3_location: S3Location, tmp_path: Path) -> None:
    async with await open_store(_config(tmp_path / "a", database, s3_location)) as a:
        ing = await a.begin_ingest()
        await ing.write(os.urandom(300_000))
        await ing.checkpoint()
        keeper = a.core.tail_keeper
        assert keeper is not None and keeper.ingest_tail(ing.id, 300_000) is not None
        assert keeper.ingest_tail(ing.id, 1) is None  # not a checkpoint of it
        await ing.abort()
        assert keeper.ingest_tail(ing.id, 300_000) is None
        ing = await a.begin_ingest()
        await ing.write(b"x" * 1000)
        await ing.park()
        assert await a.expire_ingests(older_than=-1) == 1
        assert keeper.ingest_tail(ing.id, 1000) is None


async def test_an_empty_directory_finds_the_packs_through_the_metadata(
        database: str, s3_location: S3Location, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 << 20)
    async with await open_store(_config(tmp_path / "a", database, s3_location)) as a:
        digest = (await a.put(data)).digest
    # no location given, no packs.json: the metadata says where, the keys come from the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_location.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_location.secret_key)
    async with await open_store(_config(tmp_path / "cli", database, None)) as cli:
        assert await cli.read_bytes(digest) == data
    assert not (tmp_path / "cli" / "packs.json").exists()
    # another prefix for the same metadata is refused, from an empty directory too
    elsewhere = S3Location(s3_location.endpoint, s3_location.bucket, s3_location.prefix + "other/",
                           s3_location.access_key, s3_location.secret_key, secure=False,
                           part_size=s3_location.part_size)
    with pytest.raises(S3LocationError, match="the store's metadata keeps its packs in s3://"):
        await open_store(_config(tmp_path / "wrong", database, elsewhere))


async def test_single_node_stores_keep_tail_files(
        database: str, s3_location: S3Location, tmp_path: Path) -> None:
    for config in (StoreConfig.at(tmp_path / "sqlite-s3").with_packs_in(s3_location),
                   StoreConfig.at(tmp_path / "pg-files", database=database, migrate=True)):
        async with await open_store(config) as store:
            assert store.core.tail_keeper is None
            ing = await store.begin_ingest()
            await ing.write(os.urandom(200_000))
            await ing.checkpoint()
            assert _files(config.root) == [f"{ing.id}.200000.tail"]
            await ing.abort()


async def test_a_tail_file_from_before_the_upgrade_still_resumes(
        database: str, s3_location: S3Location, tmp_path: Path) -> None:
    data = os.urandom(500_000)
    async with await open_store(_config(tmp_path / "shared", database, s3_location)) as store:
        keeper = store.core.tail_keeper
        store.core.tail_keeper = None  # as a pybuild before schema step 3 checkpointed
        ing = await store.begin_ingest()
        await ing.write(data[:300_000])
        await ing.checkpoint()
        store.core.tail_keeper = keeper
        assert _files(store.root) == [f"{ing.id}.300000.tail"]
        resumed = await store.resume_ingest(ing.id)
        await resumed.write(data[300_000:])
        assert (await resumed.commit(Digest.of(data))).size == len(data)
        assert _files(store.root) == []
        # a tail that is nowhere is named as such
        lost = await store.begin_ingest()
        await lost.write(b"y" * 5000)
        await lost.checkpoint()
        with pytest.raises(StoreCorrupt, match="neither in the metadata nor in"):
            store.core.read_tail(lost.id, 4000, 1000)


@pytest.mark.parametrize("seed", range(4))
async def test_uploads_cut_at_random_across_replicas_commit_the_bytes_sent(
        database: str, s3_location: S3Location, tmp_path: Path, seed: int) -> None:
    # Chunks of random sizes (some past the cutter's gather, some a few bytes), each ended
    # by a park (as a PATCH ends) on a replica picked at random, text and random bytes,
    # sometimes a second checkpoint with nothing new, sometimes a last chunk at the
    # commit: whatever was sealed with a checkpoint's tail, the blob is the bytes sent.
    import random

    rnd = random.Random(seed)
    data = rnd.randbytes(rnd.randrange(1, 5 << 20)) if seed % 2 else (b"text %d " % seed) * 300_000
    async with await open_store(_config(tmp_path / "a", database, s3_location)) as a, \
            await open_store(_config(tmp_path / "b", database, s3_location)) as b:
        stores = [a, b]
        ing = await rnd.choice(stores).begin_ingest()
        pos, parked = 0, True
        while pos < len(data):
            end = min(len(data), pos + rnd.choice([7, 4096, 100_000, 1 << 20, 3 << 20]))
            ing = await rnd.choice(stores).resume_ingest(ing.id)
            await ing.write(data[pos:end])
            pos = end
            if rnd.random() < 0.3:
                await ing.checkpoint()
            parked = pos < len(data) or rnd.random() < 0.7
            if parked:
                await ing.park()
        if parked:  # the PUT on any replica; else the last bytes came with it, here
            ing = await rnd.choice(stores).resume_ingest(ing.id)
        info = await ing.commit(Digest.of(data))
        for store in stores:
            assert await store.read_bytes(info.digest) == data
        fsck = await a.fsck()
        assert fsck.ok, fsck.problems
