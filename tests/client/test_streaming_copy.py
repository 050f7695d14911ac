"""Copies to a registry from another registry or an OCI layout stream each blob: no local
copy, the source read again by Range when an upload resumes, the bytes checked on the way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cas import Digest
from cas.s3_location import S3Location
from registry.client.image_store import ImageStore
from registry.client.pull import BlobError
from registry.client.refs import parse_image_ref
from registry.client.remote import RegistryClient
from testkit.images import make_image as make_layout_image
from testkit.images import make_layer, tar_files, write_oci_layout

from .helpers import make_image, random_bytes
from .test_faults import SMALL_PARTS, big_layer, copy, cut_first_big_upload, publish

ROOT = Path(__file__).resolve().parents[2]


async def test_a_copy_between_registries_keeps_no_local_copy(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient, tmp_path: Path,
) -> None:
    image = make_image([[random_bytes(16_384, 900 + i) for i in range(40)]])
    src = await publish(registry_host, "stream/src", image, tmp_path, client)
    # Another host (a proxy in front of the same registry): no cross-repository mount.
    proxy, other = await make_proxy(registry_host)
    dst = f"{other}/stream/dst:v1"
    result = await copy(src, dst, images, client)
    assert result.digest == image.digest
    assert set(result.blobs.values()) == {"pushed"}
    for blob in (image.config, *image.layers):
        assert await images.store.stat(Digest.of(blob)) is None  # nothing kept locally
    _layer, size = big_layer(image)
    patched = sum(int(r.split("-")[1]) - int(r.split("-")[0]) + 1
                  for m, p, r in proxy.log if m == "PATCH" and r)
    assert patched == size  # the layer went up in PATCH chunks, once
    body, _, _ = await client.get_manifest(parse_image_ref(dst))
    assert body == image.manifest


async def test_a_streamed_upload_cut_half_way_reads_the_source_again_from_there(
    registry_host: str, make_proxy: Any, images: ImageStore, client: RegistryClient,
    tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    image = make_image([[random_bytes(16_384, 950 + i) for i in range(40)]])  # ~650 KB layer
    await publish(registry_host, "stream/cut", image, tmp_path, client)
    digest, size = big_layer(image)
    source, src_host = await make_proxy(registry_host)
    cuts: list[tuple[str, int]] = []
    _, dst_host = await make_proxy(registry_host, cut_body=cut_first_big_upload(cuts))
    result = await copy(f"{src_host}/stream/cut:v1", f"{dst_host}/stream/cut-copy:v1", images, client)
    assert result.digest == image.digest and len(cuts) == 1
    starts = [int((r or "bytes=0-").split("=")[1].split("-")[0])
              for m, p, r in source.log if m == "GET" and digest.encoded in p]
    if "pybuild" in request.node.callspec.id:
        # The registry kept the prefix of the broken PATCH: the source is read again from
        # where the session stands, not from byte 0.
        assert len(starts) == 2 and starts[0] == 0 and 0 < starts[1] < size
    else:
        # Distribution forgets the session: the blob is read and sent again, whole.
        assert starts == [0, 0]
    assert await images.pending_push(f"{dst_host}/stream/cut-copy@{digest}") is None
    assert await images.store.stat(digest) is None


async def test_a_corrupt_layout_blob_is_refused_and_nothing_is_pushed(
    registry_host: str, images: ImageStore, client: RegistryClient, tmp_path: Path,
) -> None:
    image = make_image([[random_bytes(16_384, 990 + i) for i in range(40)]])
    src = await publish(registry_host, "stream/good", image, tmp_path, client)
    layout = tmp_path / "layout"
    await copy(src, f"oci:{layout}:v1", images, client)
    digest, size = big_layer(image)
    path = layout / "blobs" / "sha256" / digest.encoded
    data = bytearray(path.read_bytes())
    data[size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = await ImageStore.open(tmp_path / "fresh")  # holds none of the blobs
    try:
        dst = f"{registry_host}/stream/bad:v1"
        with pytest.raises(BlobError, match=f"{digest}.*do not match"):
            await copy(f"oci:{layout}:v1", dst, fresh, client)
        ref = parse_image_ref(dst)
        assert await client.head_blob(ref.api_host, ref.name, digest) is None
        assert await client.head_manifest(ref) is None
        assert await fresh.pending_push(f"{ref.api_host}/{ref.name}@{digest}") is None
    finally:
        await fresh.close()
    assert size > 4 * SMALL_PARTS.upload_chunk


@pytest.mark.parametrize("store", ["unreachable-packs", "not-made"])
def test_a_streaming_copy_needs_no_local_store(distribution: str, tmp_path: Path, store: str) -> None:
    # skopeo copies oci:DIR to a registry with no store at all. pybuild's copy streams
    # too: a local store whose S3 packs cannot be reached, or that was never made (a
    # read-only HOME), does not stop it, and none is made.
    image = make_layout_image([make_layer(tar_files({"a.txt": b"streamed" * 500}))])
    layout = write_oci_layout(image, tmp_path / "layout", ref="v1")
    storage = tmp_path / "home" / "store"
    if store == "unreachable-packs":
        storage.mkdir(parents=True)
        S3Location("127.0.0.1:9", "bucket", "p/", "key", "secret", "us-east-1", secure=False).record(storage)
    dst = f"{distribution}/nostore/{store}:v1"
    done = subprocess.run(
        [sys.executable, "-m", "builder", "copy", "--storage", str(storage), f"oci:{layout}:v1", f"docker://{dst}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{dst}: digest {image.manifest_digest}" in done.stderr
    if store == "unreachable-packs":
        assert f"the local store {storage} cannot be used (S3 endpoint" in done.stderr
    else:
        assert not storage.parent.exists()
