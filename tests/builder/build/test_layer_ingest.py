"""A step's layer goes straight into the store: verified, complete, and nothing is left
behind when writing it fails."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from builder.layers import chunked
from cas import Store


async def _blob(storage: Path, digest: object) -> bytes:
    store = await Store.open(storage)
    try:
        return b"".join([c async for c in store.read(digest)])  # type: ignore[arg-type]
    finally:
        await store.close()


async def _open_ingests(storage: Path) -> list[object]:
    store = await Store.open(storage)
    try:
        return list(await store.list_ingests())
    finally:
        await store.close()


def test_layers_are_stored_as_written(context_of, build, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    result = build(context_of("basic"), storage=storage, source_date_epoch=0)
    layers = result.image.manifest.layers[1:]
    diff_ids = result.image.config.rootfs.diff_ids[1:]
    assert layers
    for desc, diff_id in zip(layers, diff_ids):
        data = asyncio.run(_blob(storage, desc.digest))
        assert len(data) == desc.size
        assert hashlib.sha256(data).hexdigest() == desc.digest.encoded
        tar = gzip.decompress(data)
        assert hashlib.sha256(tar).hexdigest() == diff_id.encoded
        with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
            assert tf.getmembers()
    assert asyncio.run(_open_ingests(storage)) == []


def test_a_failing_layer_writer_leaves_no_ingest(context_of, build, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    storage = tmp_path / "storage"
    real = chunked.write_frames

    def broken(tar_stream, out, **kw):  # type: ignore[no-untyped-def]
        out.write(b"\x1f\x8b partial frame bytes" * 1000)
        raise OSError(5, "Input/output error")

    ctx = context_of("basic")
    monkeypatch.setattr(chunked, "write_frames", broken)
    with pytest.raises(OSError, match="Input/output error"):
        build(ctx, storage=storage, source_date_epoch=0)
    assert asyncio.run(_open_ingests(storage)) == []
    monkeypatch.setattr(chunked, "write_frames", real)
    result = build(ctx, storage=storage, source_date_epoch=0)
    assert len(result.ran_steps) >= 1  # nothing half-written was cached
