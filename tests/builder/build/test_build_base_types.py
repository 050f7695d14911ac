"""A base image in Docker's schema 2 (as ``docker push`` and Docker 20.10's BuildKit
write them): the image built on it is OCI, its base layers named by OCI's media types."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cas import Digest

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def _as_docker_schema2(layout: Path) -> None:
    """Rewrite the one image of the OCI layout ``layout`` as a Docker schema 2 manifest."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    entry = index["manifests"][0]
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_text())
    manifest["mediaType"] = DOCKER_MANIFEST
    manifest["config"]["mediaType"] = DOCKER_CONFIG
    for layer in manifest["layers"]:
        layer["mediaType"] = DOCKER_LAYER
    raw = json.dumps(manifest).encode()
    digest = Digest.of(raw)
    (blobs / digest.encoded).write_bytes(raw)
    entry.update(mediaType=DOCKER_MANIFEST, digest=str(digest), size=len(raw))
    (layout / "index.json").write_text(json.dumps(index))


def test_an_oci_image_built_on_a_docker_base_names_its_layers_by_oci_types(
        build, busybox_ref: str, tmp_path: Path) -> None:
    docker_base = tmp_path / "docker-base"
    shutil.copytree(busybox_ref.removeprefix("oci-layout://").rsplit(":", 1)[0], docker_base)
    _as_docker_schema2(docker_base)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM oci-layout://{docker_base}:latest\nRUN echo built > /built\n")
    result = build(ctx, oci=tmp_path / "oci")
    types = [layer.media_type for layer in result.image.manifest.layers]
    assert result.image.manifest.media_type == "application/vnd.oci.image.manifest.v1+json"
    assert types == ["application/vnd.oci.image.layer.v1.tar+gzip"] * 2
