"""podman, buildah and umoci against the registry under test."""

from __future__ import annotations

import filecmp
import gzip
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest

from builder.sandbox.rootfs import overlay_supported
from testkit.clients import ContainerStorage, buildah, podman, run, skopeo, umoci
from testkit.docker_engine import remove_tree
from testkit.images import Image, make_image, make_layer, read_oci_layout, tar_files, write_oci_layout
from testkit.registries import RunningRegistry, get_manifest, http
from testkit.rootfs import find_busybox
from testkit.tools import missing, require_root, require_tool


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


def _partial_pull_storage(base: Path) -> dict[str, str]:
    """The environment of a podman whose containers/storage is ``overlay`` under ``base``
    with partial pulls on: a zstd:chunked layer is fetched as the byte ranges of the
    files it lacks, in one GET with a multipart/byteranges answer."""
    conf = base / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{base}/run"\ngraphroot = "{base}/root"\n'
        "[storage.options]\n"
        'pull_options = {enable_partial_images = "true", use_hard_links = "false", ostree_repos = ""}\n'
    )
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}


def test_podman_partial_pull_of_a_zstd_chunked_image(
    registry_under_test: RunningRegistry, tmp_path: Path
) -> None:
    require_root("podman's overlay storage (partial pulls need it)")
    files = {f"data/f{i:04d}.bin": os.urandom(300) for i in range(1500)}
    layout = write_oci_layout(make_image([make_layer(tar_files(files))]), tmp_path / "layout")
    ref = registry_under_test.ref("e2e/chunked", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", "--dest-compress-format", "zstd:chunked",
               f"oci:{layout}:latest", f"docker://{ref}"))
    manifest = json.loads(get_manifest(registry_under_test.addr, "e2e/chunked", "v1").body)
    layer = manifest["layers"][0]
    assert "io.containers.zstd-chunked.manifest-position" in layer["annotations"]

    base = Path(tempfile.mkdtemp(prefix="pbo", dir="/tmp"))
    if not overlay_supported(base):
        remove_tree(base)
        missing("podman's partial pulls need overlay storage: this kernel refuses overlay mounts")
    env = _partial_pull_storage(base)
    tool = [require_tool("podman"), "--cgroup-manager", "cgroupfs", "--events-backend", "file"]
    try:
        pulled = run([*tool, "--log-level=debug", "pull", "--tls-verify=false", ref], env=env)
        assert f"Retrieved partial blob {layer['digest']}" in pulled.stderr
        mounted = Path(run([*tool, "image", "mount", ref], env=env).stdout.strip())
        try:
            for name, data in files.items():
                assert (mounted / name).read_bytes() == data, name
        finally:
            run([*tool, "image", "unmount", "--all"], env=env, check=False)
    finally:
        run([*tool, "rmi", "--all", "--force"], env=env, check=False)
        remove_tree(base)

    # What the pull asked: every file's range in one header (1,500 ranges, merged by
    # containers/storage into at most 1,024: ~15 KiB). The answer is one part per range.
    size = layer["size"]
    spans = [(i * (size // 1100), 7) for i in range(1024)]
    header = "bytes=" + ",".join(f"{start}-{start + n - 1}" for start, n in spans)
    assert len(header) > 8 * 1024
    whole = http(registry_under_test.addr, "GET", f"/v2/e2e/chunked/blobs/{layer['digest']}").body
    resp = http(registry_under_test.addr, "GET", f"/v2/e2e/chunked/blobs/{layer['digest']}",
                headers={"Range": header})
    assert resp.status == 206
    kind, _, boundary = resp.headers["content-type"].partition("; boundary=")
    assert kind == "multipart/byteranges"
    parts = resp.body.split(f"\r\n--{boundary}".encode())[:-1]
    assert len(parts) == len(spans)
    for part, (start, n) in zip(parts, spans):
        head, _, data = part.partition(b"\r\n\r\n")
        assert f"Content-Range: bytes {start}-{start + n - 1}/{size}".encode() in head
        assert data == whole[start:start + n]
