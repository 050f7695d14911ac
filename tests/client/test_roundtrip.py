"""push / pull / copy round trips against pybuild's registry and CNCF Distribution."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from cas import Digest
from registry import oci
from registry.client.copy import CopyError, CopyOptions, Endpoint, copy_image, parse_endpoint
from registry.client.image_store import ImageNotFound, ImageStore
from registry.client.progress import Progress
from registry.client.refs import parse_image_ref
from registry.client.remote import RegistryClient
from registry.errors import RegistryError
from testkit.tools import require_tool

from .helpers import make_image, make_index, random_bytes, simple_image, store_image


def unique(host: str, tag: str = "v1") -> str:
    return f"{host}/test/{uuid.uuid4().hex[:10]}:{tag}"


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient, **kw: object):
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions(**kw))  # type: ignore[arg-type]


async def test_push_then_pull_gives_identical_digests(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient
) -> None:
    image = simple_image(1)
    ref = unique(registry_host)
    local_digest = await store_image(images, ref, image)
    pushed = await copy(f"local:{ref}", ref, images, client)
    assert pushed.digest == local_digest == image.digest
    assert set(pushed.blobs.values()) == {"pushed"}
    # The registry serves exactly the bytes we pushed.
    body, media_type, digest = await client.get_manifest(parse_image_ref(ref))
    assert body == image.manifest and digest == image.digest and media_type == oci.OCI_MANIFEST

    pulled = await copy(ref, f"local:{ref}", images2, client)
    assert pulled.digest == image.digest
    manifest, config = await images2.get(ref)
    assert manifest.to_json() == oci.Manifest.parse(image.manifest).to_json()
    assert config.architecture == "amd64"
    for blob in (image.config, *image.layers):
        assert await images2.store.read_bytes(Digest.of(blob)) == blob
    assert (await images2.store.fsck()).ok

    # Pushing again transfers nothing: every blob exists.
    again = await copy(f"local:{ref}", ref, images, client)
    assert set(again.blobs.values()) == {"exists"}


async def test_pull_twice_fetches_nothing_the_second_time(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient
) -> None:
    image = simple_image(2)
    ref = unique(registry_host)
    await store_image(images, ref, image)
    await copy(f"local:{ref}", ref, images, client)
    first = await copy(ref, f"local:{ref}", images2, client)
    assert set(first.blobs.values()) == {"pulled"}
    second = await copy(ref, f"local:{ref}", images2, client)
    assert set(second.blobs.values()) == {"exists"}


async def test_copy_within_a_registry_mounts(
    registry_host: str, images: ImageStore, client: RegistryClient
) -> None:
    image = simple_image(3)
    src = unique(registry_host)
    await store_image(images, src, image)
    await copy(f"local:{src}", src, images, client)
    dst = unique(registry_host, "copied")
    result = await copy(f"docker://{src}", f"docker://{dst}", images, client)
    assert set(result.blobs.values()) == {"mounted"}
    assert (await client.get_manifest(parse_image_ref(dst)))[2] == image.digest


async def test_push_mounts_from_the_repository_the_image_was_pulled_from(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient
) -> None:
    image = simple_image(4)
    src = unique(registry_host)
    await store_image(images, src, image)
    await copy(f"local:{src}", src, images, client)
    await copy(src, f"local:{src}", images2, client)
    other = unique(registry_host, "retagged")
    await images2.put(other, image.manifest)
    result = await copy(f"local:{other}", other, images2, client)
    assert set(result.blobs.values()) == {"mounted"}


async def test_oci_layout_round_trip(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient,
    tmp_path: Path,
) -> None:
    image = simple_image(5)
    ref = unique(registry_host)
    await store_image(images, ref, image)
    layout = tmp_path / "layout"
    out = await copy(f"local:{ref}", f"oci:{layout}:v1", images, client)
    assert out.digest == image.digest
    assert (layout / "oci-layout").exists()
    assert (layout / "blobs" / "sha256" / image.digest.encoded).read_bytes() == image.manifest
    index = oci.Index.parse((layout / "index.json").read_bytes())
    assert index.manifests[0].annotations == {"org.opencontainers.image.ref.name": "v1"}
    # layout -> registry -> another store: same digests all the way.
    pushed = await copy(f"oci:{layout}:v1", ref, images2, client)
    assert pushed.digest == image.digest
    back = await copy(ref, f"local:{ref}", images2, client)
    assert back.digest == image.digest


async def test_oci_layout_with_corrupt_blob_is_refused(
    images: ImageStore, images2: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    image = simple_image(6)
    await store_image(images, "localhost/x:1", image)
    layout = tmp_path / "layout"
    await copy("local:localhost/x:1", f"oci:{layout}", images, client)
    victim = layout / "blobs" / "sha256" / Digest.of(image.layers[0]).encoded
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(Exception, match=Digest.of(image.layers[0]).encoded):
        await copy(f"oci:{layout}", "local:localhost/y:1", images2, client)
    assert await images2.store.stat(Digest.of(image.layers[0])) is None
    assert (await images2.store.fsck()).ok


async def test_docker_archive_round_trip(
    images: ImageStore, images2: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    image = simple_image(7)
    await store_image(images, "localhost/arch:1", image)
    archive = tmp_path / "image.tar"
    await copy("local:localhost/arch:1", f"docker-archive:{archive}:localhost/arch:1", images, client)
    import tarfile

    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "manifest.json" in names and f"{Digest.of(image.config).encoded}.json" in names
    back = await copy(f"docker-archive:{archive}", "local:localhost/arch:2", images2, client)
    manifest, _config = await images2.get("localhost/arch:2")
    original = oci.Manifest.parse(image.manifest)
    assert manifest.config.digest == original.config.digest
    assert [d.digest for d in manifest.layers] == [d.digest for d in original.layers]
    assert all(d.media_type == oci.DOCKER_LAYER for d in manifest.layers)
    assert back.media_type == oci.DOCKER_MANIFEST


async def test_index_one_platform_or_all(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient
) -> None:
    amd, arm = simple_image(8, (40_000,)), simple_image(9, (40_000,))
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    ref = unique(registry_host)
    for img in (amd, arm):
        for blob in (img.config, *img.layers):
            await images.store.put(blob)
        await images.store.put(img.manifest)
    await images.put(ref, index)
    pushed = await copy(f"local:{ref}", ref, images, client, all_platforms=True)
    assert pushed.digest == Digest.of(index)

    one = await copy(ref, f"local:{ref}", images2, client, platform="linux/arm64")
    assert one.digest == arm.digest
    assert await images2.store.stat(Digest.of(amd.layers[0])) is None
    every = await copy(ref, f"local:{ref}", images2, client, all_platforms=True)
    assert every.digest == Digest.of(index)
    manifest, _config = await images2.get(ref, platform="linux/amd64")
    assert manifest.layers[0].digest == Digest.of(amd.layers[0])


async def test_an_index_without_this_machines_platform_is_not_pulled_in_its_place(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As Docker and containerd: the default is this machine's platform, and an index
    that lacks it is an error naming what it has, not its first image."""
    arm, s390x = simple_image(12, (20_000,)), simple_image(13, (20_000,))
    index = make_index([(arm, "arm64"), (s390x, "s390x")])
    ref = unique(registry_host)
    for img in (arm, s390x):
        for blob in (img.config, *img.layers, img.manifest):
            await images.store.put(blob)
    await images.put(ref, index)
    await copy(f"local:{ref}", ref, images, client, all_platforms=True)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    with pytest.raises(ImageNotFound, match=r"linux/amd64 .*it has: linux/arm64, linux/s390x"):
        await copy(ref, f"local:{ref}", images2, client)
    assert await images2.resolve(ref) is None
    monkeypatch.setattr("platform.machine", lambda: "aarch64")  # a machine it has
    assert (await copy(ref, f"local:{ref}", images2, client)).digest == arm.digest
    one = await copy(ref, f"local:{ref}", images2, client, platform="linux/arm64/v8")
    assert one.digest == arm.digest  # arm64/v8 is arm64, as containerd normalises it


def test_parse_endpoint() -> None:
    assert parse_endpoint("oci:/a/b:tag") == Endpoint("oci", path=Path("/a/b"), name="tag")
    assert parse_endpoint("oci:/a/b") == Endpoint("oci", path=Path("/a/b"))
    assert parse_endpoint("docker-archive:x.tar:localhost:5000/a:1").name == "localhost:5000/a:1"
    assert parse_endpoint("local:alpine").ref == parse_image_ref("docker.io/library/alpine:latest")
    assert parse_endpoint("docker://localhost:5000/a").kind == "registry"
    with pytest.raises(ValueError, match="tag"):
        parse_endpoint("localhost:5000/a:b!c")


async def test_a_destination_named_by_digest_gets_that_manifest_or_the_copy_is_refused(
    registry_host: str, images: ImageStore, images2: ImageStore, client: RegistryClient
) -> None:
    amd, arm = simple_image(10, (30_000,)), simple_image(11, (30_000,))
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    for img in (amd, arm):
        await store_image(images, f"localhost/p:{img.digest.encoded[:8]}", img)
    await images.put("localhost/multi:1", index)
    idx = Digest.of(index)
    src = unique(registry_host)
    await copy("local:localhost/multi:1", src, images, client, all_platforms=True)
    repo = src.rpartition(":")[0] + "x"

    # One platform of the index is not the index: nothing is written under its digest.
    with pytest.raises(CopyError, match="--all-platforms"):
        await copy(f"{repo[:-1]}@{idx}", f"{repo}@{idx}", images2, client)
    with pytest.raises(RegistryError):
        await client.get_manifest(parse_image_ref(f"{repo}@{idx}"))
    with pytest.raises(CopyError, match=f"name a tag instead, or the digest of what is copied \\({amd.digest}\\)"):
        await copy("local:localhost/multi:1", f"{repo}@{arm.digest}", images, client)
    with pytest.raises(CopyError, match="names digest"):
        await copy(f"local:localhost/p:{amd.digest.encoded[:8]}", f"local:localhost/q@{arm.digest}",
                   images, client)

    # What matches the digest is written.
    every = await copy(f"{repo[:-1]}@{idx}", f"{repo}@{idx}", images2, client, all_platforms=True)
    assert every.digest == idx
    one = await copy(f"{repo[:-1]}@{idx}", f"{repo}@{arm.digest}", images2, client, platform="linux/arm64")
    assert one.digest == arm.digest
    _, _, digest = await client.get_manifest(parse_image_ref(f"{repo}@{arm.digest}"))
    assert digest == arm.digest
    # A pull by the index's digest records the platform's image under that name.
    pulled = await copy(f"{repo}@{idx}", f"local:{repo}@{idx}", images2, client)
    assert pulled.digest == amd.digest


async def test_a_registry_to_registry_copy_reports_each_blob_once_and_its_bytes_once(
    distribution: str, pybuild_registry: str, images: ImageStore, client: RegistryClient
) -> None:
    image = simple_image(12, (120_000, 40_000))
    ref = unique(distribution)
    await store_image(images, ref, image)  # the local store holds every blob
    await copy(f"local:{ref}", ref, images, client)
    for dst in (unique(pybuild_registry), unique(distribution.replace("127.0.0.1", "localhost"))):
        events = io.StringIO()
        progress = Progress("json", events)
        await copy_image(parse_endpoint(ref), parse_endpoint(dst), images, client, progress, CopyOptions())
        progress.close()
        docs = [json.loads(line) for line in events.getvalue().splitlines()]
        starts = [d["id"] for d in docs if d["event"] == "start"]
        done = [d["id"] for d in docs if d["event"] == "done"]
        assert sorted(starts) == sorted(done) == sorted(image.blob_digests()), dst
        summary = docs[-1]
        assert summary["event"] == "summary" and summary["tasks"] == 3
        assert summary["transferred"] + summary["reused"] == sum(
            len(b) for b in (image.config, *image.layers))


async def test_a_docker_image_goes_into_an_oci_layout_as_oci_that_skopeo_reads(
    images: ImageStore, images2: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    # An OCI layout holds OCI types: skopeo, podman and umoci find no image behind a
    # Docker one. The manifest and the list are converted (new digests), the blobs not.
    amd, arm = (make_image([[random_bytes(20_000, 70 + i)]], arch=arch, media_type=oci.DOCKER_MANIFEST)
                for i, arch in enumerate(("amd64", "arm64")))
    for img in (amd, arm):
        await store_image(images, f"localhost/docker/{img.digest.encoded[:8]}:1", img)
    listed = json.loads(make_index([(amd, "amd64"), (arm, "arm64")]))
    listed["mediaType"] = oci.DOCKER_MANIFEST_LIST
    for entry in listed["manifests"]:
        entry["mediaType"] = oci.DOCKER_MANIFEST
    await images.put("localhost/docker/list:1", json.dumps(listed).encode())
    for src, tag, every in (("list", "all", True), (amd.digest.encoded[:8], "one", False)):
        layout = tmp_path / "layout"
        out = await copy(f"local:localhost/docker/{src}:1", f"oci:{layout}:{tag}", images, client,
                         all_platforms=every)
        index = oci.Index.parse((layout / "index.json").read_bytes())
        entry = next(d for d in index.manifests
                     if d.annotations == {"org.opencontainers.image.ref.name": tag})
        assert entry.media_type == (oci.OCI_INDEX if every else oci.OCI_MANIFEST)
        assert entry.digest == out.digest != (Digest.of(json.dumps(listed).encode()) if every else amd.digest)
        inspected = json.loads(await asyncio.to_thread(
            subprocess.check_output, [require_tool("skopeo"), "inspect", "--raw", f"oci:{layout}:{tag}"]))
        assert inspected["mediaType"] == entry.media_type
        if every:
            assert {m["mediaType"] for m in inspected["manifests"]} == {oci.OCI_MANIFEST}
        config = json.loads(await asyncio.to_thread(subprocess.check_output, [
            require_tool("skopeo"), "inspect", "--config", "--raw", f"oci:{layout}:{tag}"]))
        assert config["architecture"] == "amd64"
        # pybuild reads it back: the amd64 image, its layer the same blob.
        await copy(f"oci:{layout}:{tag}", f"local:localhost/back:{tag}", images2, client)
        manifest, _ = await images2.get(f"localhost/back:{tag}")
        assert [d.digest for d in manifest.layers] == [Digest.of(amd.layers[0])]
        assert [d.media_type for d in manifest.layers] == [oci.OCI_LAYER_GZIP]
