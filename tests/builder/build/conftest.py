"""Fixtures for build tests: a busybox base image as an OCI layout, and a build runner."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.build import BuildOptions, BuildResult, run_build
from builder.layers import import_directory
from builder.outputs import Output
from builder.progress import BuildProgress
from cas import Digest
from testkit.rootfs import make_busybox_rootfs
from testkit.tools import require_tool

TESTFILES = Path(__file__).parent / "testfiles"


def write_rootfs_layer(rootfs: Path, dest: Path,  # type: ignore[no-untyped-def]
                       owner: tuple[int, int] | None = (0, 0)):
    """The tree ``rootfs`` as one layer blob in the new OCI layout ``dest``, every entry
    owned by ``owner`` (None: the owners on disk); returns ``(blobs directory, layer)``."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tmp = dest / "layer.tmp"
    with open(tmp, "wb") as f:
        layer = import_directory(rootfs, f, source_date_epoch=0, owner=owner)
    os.rename(tmp, blobs / layer.digest.encoded)
    return blobs, layer


def write_base_layout(rootfs: Path, dest: Path,
                      owner: tuple[int, int] | None = (0, 0),
                      env: tuple[str, ...] = ("PATH=/usr/sbin:/usr/bin:/sbin:/bin",),
                      **settings: object) -> str:
    """The tree ``rootfs`` as a one-layer image in the OCI layout ``dest`` (tag ``latest``;
    ``owner`` as for :func:`write_rootfs_layer`; ``env`` its config's Env, ``settings``
    more fields of its config, e.g. ``WorkingDir="app"``)."""
    blobs, layer = write_rootfs_layer(rootfs, dest, owner)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": list(env), "Cmd": ["sh"], **settings},
        "rootfs": {"type": "layers", "diff_ids": [str(layer.diff_id)]},
        "history": [{"created_by": "busybox rootfs"}],
    }).encode()
    cdig = Digest.of(config)
    (blobs / cdig.encoded).write_bytes(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(cdig), "size": len(config)},
        "layers": [{"mediaType": layer.media_type, "digest": str(layer.digest),
                    "size": layer.size}],
    }).encode()
    mdig = Digest.of(manifest)
    (blobs / mdig.encoded).write_bytes(manifest)
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": str(mdig),
        "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}))
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return f"oci-layout://{dest}:latest"


@pytest.fixture(scope="session")
def busybox_ref(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.geteuid() != 0:
        pytest.skip("building needs root (mounts and namespaces)") if not os.environ.get(
            "CI") else pytest.fail("building needs root")
    require_tool("bwrap")
    base = tmp_path_factory.mktemp("busybox")
    rootfs = make_busybox_rootfs(base / "rootfs")
    return write_base_layout(rootfs, base / "layout")


Builder = Callable[..., BuildResult]


@pytest.fixture
def context_of(tmp_path: Path, busybox_ref: str) -> Callable[[str], Path]:
    """Copy ``testfiles/<case>`` to a fresh context, BASE in the Dockerfile replaced."""
    def make(case: str) -> Path:
        ctx = tmp_path / f"ctx-{case}"
        shutil.copytree(TESTFILES / case, ctx, symlinks=True)
        for df in ctx.glob("*Dockerfile*"):
            if df.is_file() and not df.name.endswith(".dockerignore"):
                df.write_text(df.read_text().replace("BASE", busybox_ref))
        return ctx
    return make


@pytest.fixture
def build(tmp_path: Path) -> Builder:
    """Build synchronously in a thread-free way: ``build(ctx, storage=..., out=...)``."""
    def run(context: Path, *, storage: Path | None = None, local: Path | None = None,
            oci: Path | None = None, docker: Path | None = None, **kw: object) -> BuildResult:
        outs = []
        if local is not None:
            outs.append(Output("local", local))
        if oci is not None:
            outs.append(Output("oci", oci, tar=False))
        if docker is not None:
            outs.append(Output("docker", docker))
        opts = BuildOptions(context=context, storage=storage or tmp_path / "storage",
                            outputs=tuple(outs), **kw)  # type: ignore[arg-type]
        return asyncio.run(run_build(opts, BuildProgress("quiet")))
    return run


def used_record(path: Path, used: float, marker: str | None = None) -> Path:
    """A build-cache record of 100 KiB at ``path`` last used at ``used`` (a Unix time): an
    extracted layer (its directory's mtime), or with ``marker`` "id" a cache mount (that
    file's mtime), as prune and the automatic GC read them."""
    path.mkdir(parents=True)
    (path / "data").write_bytes(os.urandom(100 * 1024))
    stamp = path / marker if marker else path
    if marker:
        stamp.write_text("x")
    os.utime(stamp, (used, used))
    return path
