"""Docker archives, OCI layouts and transport names, as ``pybuild copy`` reads and writes them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from cas import Digest
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.layouts import LayoutError
from registry.client.progress import Progress
from registry.client.remote import RegistryClient

from .helpers import SampleImage, simple_image


async def copy(src: str, dst: str, images: ImageStore, client: RegistryClient, **kw: object):
    return await copy_image(parse_endpoint(src), parse_endpoint(dst), images, client,
                            Progress("quiet"), CopyOptions(**kw))  # type: ignore[arg-type]


def docker_save(path: Path, images: list[tuple[SampleImage, list[str]]]) -> None:
    """A tar as ``docker save a b`` writes it: RepoTags in Docker's short form."""
    entries = []
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for image, tags in images:
            config = f"{Digest.of(image.config).encoded}.json"
            add(config, image.config)
            layers = []
            for layer in image.layers:
                layers.append(f"{Digest.of(layer).encoded}/layer.tar")
                add(layers[-1], layer)
            entries.append({"Config": config, "RepoTags": tags, "Layers": layers})
        add("manifest.json", json.dumps(entries).encode())


async def test_a_docker_save_archive_is_read_by_the_short_names_docker_writes(
    images: ImageStore, client: RegistryClient, tmp_path: Path
) -> None:
    busybox, alpine = simple_image(70, (30_000,)), simple_image(71, (30_000,))
    archive = tmp_path / "saved.tar"
    docker_save(archive, [(busybox, ["busybox:latest"]), (alpine, ["alpine:3", "localhost:5000/a/b:1"])])
    for name, image in (("busybox:latest", busybox), ("busybox", busybox),
                        ("docker.io/library/alpine:3", alpine), ("alpine:3", alpine),
                        ("localhost:5000/a/b:1", alpine)):
        await copy(f"docker-archive:{archive}:{name}", "local:localhost/picked:1", images, client)
        manifest, _ = await images.get("localhost/picked:1")
        assert manifest.config.digest == Digest.of(image.config), name
    with pytest.raises(LayoutError, match="has no image docker.io/library/alpine:latest"):
        await copy(f"docker-archive:{archive}:alpine", "local:localhost/picked:1", images, client)
