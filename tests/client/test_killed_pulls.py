"""Transfers killed outright (SIGKILL, a CI job's timeout) leave nothing behind for ever:
once their ingests have ended (``pybuild storage gc``, the ingest TTL), the next pull
forgets their claim files and ``pulls`` rows, and the upload sessions of pushes older
than any registry keeps them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import PUSH_SESSION_DAYS, ImageStore
from registry.client.progress import Progress
from registry.client.remote import RegistryClient

from .helpers import simple_image, store_image


def claims(storage: Path) -> set[str]:
    return {p.name for p in (storage / "ingests").glob(".pull-*.lock")}


async def test_claims_and_rows_of_killed_transfers_go_once_they_cannot_resume(
    pybuild_registry: str, client: RegistryClient, tmp_path: Path
) -> None:
    ref = f"{pybuild_registry}/killed/img:v1"
    image = simple_image(31, (200_000,))
    async with await ImageStore.open(tmp_path / "publisher") as publisher:
        await store_image(publisher, ref, image)
        await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), publisher, client,
                         Progress("quiet"), CopyOptions())
    storage = tmp_path / "local"
    async with await ImageStore.open(storage) as images:
        # What three killed pulls leave: an open ingest each, its claim file (the flock
        # went with the process) and, for those past a checkpoint, a ``pulls`` row.
        for n in range(3):
            ing = await images.store.begin_ingest()
            claim = images.claim_ingest(ing.id)
            assert claim is not None
            if n:
                await images.set_pending_pull(Digest.of(b"killed %d" % n), ing.id)
            os.close(claim)
        # A pull running beside them in another process keeps its claim and row.
        running = await images.store.begin_ingest()
        held = images.claim_ingest(running.id)
        assert held is not None
        await images.set_pending_pull(Digest.of(b"running"), running.id)
        assert len(claims(storage)) == 4
        # Two killed pushes: one a week ago and more, one today (it may still resume).
        await images.set_pending_push("old", "/v2/r/blobs/uploads/old")
        await images.set_pending_push("new", "/v2/r/blobs/uploads/new")
        await images._sql("UPDATE pushes SET updated = ? WHERE key = 'old'",
                          time.time() - PUSH_SESSION_DAYS * 86400 - 60)
        assert len(claims(storage)) == 4
        await images.store.gc(grace=3600, ingest_ttl=-1)  # ends every ingest, as the TTL would
        assert await images.store.list_ingests() == []
    try:
        async with await ImageStore.open(storage) as images:
            result = await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                                      client, Progress("quiet"), CopyOptions())
            assert result.digest == image.digest
            assert claims(storage) == {f".pull-{running.id}.lock"}  # still held
            assert await images.pending_pull(Digest.of(b"killed 1")) is None
            assert await images.pending_pull(Digest.of(b"killed 2")) is None
            assert await images.pending_push("old") is None
            assert await images.pending_push("new") == "/v2/r/blobs/uploads/new"
    finally:
        os.close(held)
    async with await ImageStore.open(storage) as images:
        # Released (by a process that is gone): the next pull forgets it too.
        await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                         client, Progress("quiet"), CopyOptions())
        assert claims(storage) == set()
        assert await images.pending_pull(Digest.of(b"running")) is None
