"""``FROM --platform``, ``pybuild build --platform`` and the automatic platform args."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.steps.common import BuildError
from cas import Digest
from registry.oci import Platform
from testkit.rootfs import make_busybox_rootfs
from tests.builder.build.conftest import write_rootfs_layer
from tests.helpers.contexts import context_with_base

HOST = Platform.host()
OTHER = "linux/arm64" if HOST.architecture != "arm64" else "linux/amd64"
TESTFILES = Path(__file__).parent / "testfiles" / "platform"


def _blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = Digest.of(data)
    (blobs / digest.encoded).write_bytes(data)
    return {"digest": str(digest), "size": len(data)}


def _multi_platform_layout(rootfs: Path, dest: Path, platforms: list[str]) -> str:
    """An OCI layout whose tag ``multi`` is an image index with one manifest per platform
    (all of them the same busybox layer: only the labels differ)."""
    blobs, layer = write_rootfs_layer(rootfs, dest)
    entries = []
    for plat in platforms:
        os_, arch, *variant = plat.split("/")
        config = json.dumps({
            "architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {}),
            "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Labels": {"built.for": plat}},
            "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id)]},
        }).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       **_blob(blobs, config)},
            "layers": [{"mediaType": layer.media_type, "digest": str(layer.digest),
                        "size": layer.size}],
        }).encode()
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        **_blob(blobs, manifest),
                        "platform": {"os": os_, "architecture": arch,
                                     **({"variant": variant[0]} if variant else {})}})
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": entries}).encode()
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", **_blob(blobs, index),
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return f"oci-layout://{dest}:multi"


@pytest.fixture(scope="module")
def multi_ref(busybox_ref: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("multi")
    rootfs = make_busybox_rootfs(base / "rootfs")
    return _multi_platform_layout(rootfs, base / "layout", [str(HOST), OTHER])


def _context(tmp_path: Path, ref: str) -> Path:
    return context_with_base(TESTFILES, tmp_path, ref)


def test_cross_build_selects_the_target_platform(multi_ref: str, build, tmp_path: Path) -> None:
    ctx = _context(tmp_path, multi_ref)
    out = tmp_path / "out"
    result = build(ctx, local=out, platform=OTHER)
    arch = OTHER.split("/")[1]
    assert (out / "out.txt").read_text() == (
        f"{HOST} ({HOST.architecture}) -> {OTHER} linux {arch} []\n")
    cfg = result.image.config
    assert (cfg.os, cfg.architecture) == ("linux", arch)
    assert cfg.config is not None and cfg.config.labels == {"built.for": OTHER}
    # the default target is the host
    native = build(ctx, storage=tmp_path / "s2")
    assert native.image.config.architecture == HOST.architecture
    assert native.image.config.config.labels == {"built.for": str(HOST)}


def test_a_platform_the_index_lacks_is_named(multi_ref: str, build, tmp_path: Path) -> None:
    ctx = _context(tmp_path, multi_ref)
    with pytest.raises(BuildError) as info:
        build(ctx, platform="linux/s390x")
    message = str(info.value)
    assert "no image for platform linux/s390x" in message
    assert str(HOST) in message and OTHER in message


def test_run_for_a_foreign_platform_needs_an_emulator(
        multi_ref: str, build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = _context(tmp_path, multi_ref)
    empty = tmp_path / "binfmt_misc"  # binfmt_misc with no entry registered
    empty.mkdir()
    (empty / "status").write_text("enabled\n")
    monkeypatch.setenv("PYBUILD_BINFMT_MISC", str(empty))
    with pytest.raises(BuildError, match=rf"Dockerfile.run:2: RUN: no emulator for {OTHER} "
                                         r"is registered with binfmt_misc"):
        build(ctx, dockerfile=ctx / "Dockerfile.run", platform=OTHER)


def test_scratch_takes_the_stage_platform(busybox_ref: str, build, tmp_path: Path) -> None:
    ctx = _context(tmp_path, busybox_ref)
    result = build(ctx, dockerfile=ctx / "Dockerfile.scratch")
    cfg = result.image.config
    assert (cfg.os, cfg.architecture, cfg.variant) == ("linux", "arm", "v7")
