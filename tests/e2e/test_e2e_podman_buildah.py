"""podman, buildah and umoci against the registry under test."""

from __future__ import annotations

import filecmp
import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from testkit.clients import ContainerStorage, buildah, podman, run, skopeo, umoci
from testkit.images import Image, read_oci_layout
from testkit.registries import RunningRegistry, get_manifest
from testkit.rootfs import find_busybox


def push_layout(layout: Path, registry: RunningRegistry, repository: str, tag: str) -> str:
    ref = registry.ref(repository, tag)
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{ref}"))
    return ref


def test_podman_pull_and_push(
    busybox: Image, busybox_layout: Path, registry_under_test: RunningRegistry,
    container_storage: ContainerStorage,
) -> None:
    ref = push_layout(busybox_layout, registry_under_test, "e2e/busybox", "v1")
    run(podman(container_storage, "pull", "--quiet", "--tls-verify=false", ref))
    digest = run(podman(container_storage, "image", "inspect", "--format", "{{.Digest}}", ref))
    assert digest.stdout.strip() == busybox.manifest_digest

    copy = registry_under_test.ref("e2e/podman-pushed", "v2")
    run(podman(container_storage, "push", "--tls-verify=false", ref, f"docker://{copy}"))
    resp = get_manifest(registry_under_test.addr, "e2e/podman-pushed", "v2")
    assert resp.status == 200
    manifest = json.loads(resp.body)
    # podman pushes the layer blob it pulled, unchanged.
    assert [d["digest"] for d in manifest["layers"]] == [busybox.layers[0].digest]


@pytest.mark.slow
def test_buildah_bud_from_the_registry_and_push_back(
    busybox: Image, busybox_layout: Path, registry_under_test: RunningRegistry,
    container_storage: ContainerStorage, tmp_path: Path,
) -> None:
    base = push_layout(busybox_layout, registry_under_test, "e2e/base", "v1")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Containerfile").write_text(f"FROM {base}\nRUN echo built > /built.txt\n")
    run(buildah(container_storage, "bud", "--isolation", "chroot", "--tls-verify=false",
                "--layers", "-t", "localhost/e2e-built", str(context)))
    built = registry_under_test.ref("e2e/built", "v1")
    run(buildah(container_storage, "push", "--tls-verify=false", "localhost/e2e-built",
                f"docker://{built}"))

    out = tmp_path / "pulled"
    run(skopeo("copy", "--src-tls-verify=false", f"docker://{built}", f"oci:{out}:v1"))
    pulled = read_oci_layout(out, "v1")
    assert pulled.layer_digests[0] == busybox.layers[0].digest
    assert len(pulled.layer_blobs) == 2
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(pulled.layer_blobs[1]))) as tar:
        member = tar.extractfile("built.txt")
        assert member is not None and member.read() == b"built\n"


def test_umoci_unpacks_what_the_registry_serves(
    busybox_layout: Path, registry_under_test: RunningRegistry, tmp_path: Path
) -> None:
    ref = push_layout(busybox_layout, registry_under_test, "e2e/busybox", "v1")
    layout = tmp_path / "layout"
    run(skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:v1"))
    bundle = tmp_path / "bundle"
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    run(umoci("unpack", *rootless, "--image", f"{layout}:v1", str(bundle)))

    rootfs = bundle / "rootfs"
    busybox_binary = find_busybox()
    assert busybox_binary is not None
    assert filecmp.cmp(rootfs / "bin" / "busybox", busybox_binary, shallow=False)
    assert os.readlink(rootfs / "bin" / "sh") == "busybox"
    assert (rootfs / "etc" / "passwd").read_text().startswith("root:x:0:0:")
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]


def test_umoci_unpacks_the_packed_layout_directly(busybox_layout: Path, tmp_path: Path) -> None:
    """umoci is an independent reader of OCI layouts: it accepts what testkit packs."""
    bundle = tmp_path / "bundle"
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    run(umoci("unpack", *rootless, "--image", f"{busybox_layout}:latest", str(bundle)))
    assert os.readlink(bundle / "rootfs" / "bin" / "ls") == "busybox"
    assert oct((bundle / "rootfs" / "tmp").stat().st_mode & 0o7777) == oct(0o1777)
