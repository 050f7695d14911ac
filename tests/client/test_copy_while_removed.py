"""A local image removed (``pybuild rmi``) and collected (``pybuild storage gc``) while
it is pushed or copied out: the copy still gets every blob, as Docker's push keeps its
layers referenced and containerd's its lease; once it ends, gc takes them."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import RegistryClient

from .helpers import simple_image, store_image


async def test_a_local_image_removed_while_it_is_copied_out(
        tmp_path: Path, images: ImageStore, client: RegistryClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    image = simple_image(seed=7)
    await store_image(images, "localhost/app:1", image)
    store = images.store
    reading, go_on = asyncio.Event(), asyncio.Event()
    real_read = store.read
    layers = {str(Digest.of(blob)) for blob in image.layers}

    async def read_after_gc(digest: Digest, offset: int = 0,
                            length: int | None = None) -> AsyncIterator[bytes]:
        if str(digest) in layers:  # the blobs, once the manifest was read
            reading.set()
            await go_on.wait()
        async for chunk in real_read(digest, offset, length):
            yield chunk

    monkeypatch.setattr(store, "read", read_after_gc)
    layout = tmp_path / "layout"
    copying = asyncio.create_task(copy_image(
        parse_endpoint("local:localhost/app:1"), parse_endpoint(f"oci:{layout}:1"), images,
        client, Progress("quiet"), CopyOptions()))
    await asyncio.wait_for(reading.wait(), 30)
    assert await images.remove("localhost/app:1")
    await store.gc(grace=0)
    go_on.set()
    await asyncio.wait_for(copying, 30)

    for blob in (image.config, *image.layers):
        path = layout / "blobs" / "sha256" / hashlib.sha256(blob).hexdigest()
        assert path.read_bytes() == blob
    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [str(image.digest)]
    # The copy held its blobs only while it ran.
    assert await store.list_ingests() == []
    await store.gc(grace=0)
    assert (await store.stats()).blobs == 0
