"""A lazy cache layer extracted while it downloads (``RemoteLayers.stream`` feeding
``ExtractedLayers.ensure``): verified before its extraction is used, stored once whole,
and nothing kept when the registry sends other bytes or the reader stops early."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from builder.cache import MemoryBuildCache
from builder.cache.lazy import LazyLayerError, RemoteLayers
from builder.cache.spec import CacheSpec
from builder.cache.tracking import TrackingCache
from builder.extracted import ExtractedLayers
from cas import Digest, Store, StoreConfig, open_store
from registry.oci import Descriptor
from tests.helpers.http_server import serve_answers

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layer(data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=1, mtime=0)


@contextmanager
def _blob_server(body: bytes) -> Iterator[str]:
    """A registry that serves ``body`` for every blob (whatever its digest); its address."""
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        return 200, {"Content-Type": "application/octet-stream"}, \
            body if "/blobs/" in path else b"{}"

    with serve_answers(answer) as url:
        yield url.removeprefix("http://")


def _remote(store: Store, addr: str, blob: bytes) -> tuple[RemoteLayers, Descriptor]:
    remote = RemoteLayers(store, TrackingCache(MemoryBuildCache()))
    desc = Descriptor(LAYER, Digest.parse("sha256:" + hashlib.sha256(blob).hexdigest()),
                      len(blob))
    remote.sources[desc.digest] = (CacheSpec("registry", f"{addr}/ci/cache:main"), desc,
                                   {"cache:step"})
    return remote, desc


async def test_a_streamed_layer_is_extracted_and_then_stored(tmp_path: Path) -> None:
    data = os.urandom(9 << 20)  # several reads of the registry (4 MiB each)
    blob = _layer(data)
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        with _blob_server(blob) as addr:
            remote, desc = _remote(store, addr, blob)
            # no fetch: the layer can only come through the stream
            layers = ExtractedLayers(tmp_path / "snapshots", store, None, remote.stream)
            diff_id = Digest.parse("sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest())
            root = await layers.ensure(diff_id, desc.digest)
            assert (root / "big.bin").read_bytes() == data
            await remote.close()  # waits for the store's commit
        assert await store.stat(desc.digest) is not None
        assert remote.pending([desc.digest]) == []
    finally:
        await store.close()


async def test_other_bytes_fail_and_leave_nothing(tmp_path: Path) -> None:
    blob = _layer(os.urandom(1 << 20))
    wrong = bytearray(blob)
    wrong[-20] ^= 0xFF  # same size, another digest (the gzip trailer's CRC)
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        with _blob_server(bytes(wrong)) as addr:
            remote, desc = _remote(store, addr, blob)
            layers = ExtractedLayers(tmp_path / "snapshots", store, None, remote.stream)
            diff_id = Digest.parse("sha256:" + "cd" * 32)
            with pytest.raises(LazyLayerError, match="cannot be fetched"):
                await layers.ensure(diff_id, desc.digest)
            await remote.close()
        assert not layers.path(diff_id).exists()
        assert [p.name for p in (tmp_path / "snapshots").iterdir()] == []
        assert await store.stat(desc.digest) is None
        assert remote.pending([desc.digest]) == [desc.digest]
    finally:
        await store.close()


async def test_a_stream_stopped_early_keeps_nothing_and_fetch_starts_over(
        tmp_path: Path) -> None:
    blob = _layer(os.urandom(9 << 20))
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        with _blob_server(blob) as addr:
            remote, desc = _remote(store, addr, blob)
            chunks = remote.stream(desc.digest)
            assert chunks is not None
            assert remote.stream(desc.digest) is None  # one stream at a time
            first = await anext(chunks)
            assert 0 < len(first) < len(blob)
            await chunks.aclose()  # type: ignore[attr-defined]
            assert await store.stat(desc.digest) is None
            await remote.fetch(desc.digest)
            assert await store.stat(desc.digest) is not None
            await remote.close()
    finally:
        await store.close()
