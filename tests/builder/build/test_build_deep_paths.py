"""Paths as deep as an image may hold: a RUN makes a tree whose path inside the image is
close to PATH_MAX (4096 bytes; BuildKit builds paths up to ~4,028), with the build's
storage under a long directory, so that the storage's path and the image's together pass
PATH_MAX. The next step, the ``type=tar`` and ``type=local`` outputs, a build FROM the
image (which extracts its layers) and Docker running the image all see the tree, as with
BuildKit; a hard link from a short name to the deep file stays one file when either name
is changed (overlayfs copies up one name only: the differ links the other)."""

from __future__ import annotations

import asyncio
import tarfile
import uuid
from pathlib import Path

import pytest

from builder.build import BuildOptions, run_build
from builder.outputs import Output
from builder.progress import BuildProgress
from testkit.docker_engine import DockerEngine

# 18 names of 210 bytes under /deep: 3,803 bytes; with /f 3,805 (Docker's vfs driver,
# which runs the image below its own data root, takes that much).
_NAME, _LEVELS = "d" * 210, 18
_DEEP = "deep/" + "/".join([_NAME] * _LEVELS)
_MAKE = ("d=$(printf 'd%.0s' $(seq 1 210)); p=/deep; for i in $(seq 1 18); do p=$p/$d; done")


@pytest.mark.parametrize("differ", ["overlay", "snapshot"])
def test_a_deep_tree_made_by_run_is_seen_by_every_step_and_output(
        tmp_path: Path, busybox_ref: str, differ: str, docker_engine: DockerEngine) -> None:
    storage = tmp_path / ("s" * 200) / ("t" * 200) / "storage"
    image = f"pybuild-test/deep-{uuid.uuid4().hex[:10]}:1"
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\n"
        f"RUN {_MAKE}; mkdir -p $p && echo deep > $p/f && ln $p/f /hl\n"
        f"RUN {_MAKE}; cat $p/f > /seen && echo more >> $p/f\n")
    tar_out, local, archive = tmp_path / "rootfs.tar", tmp_path / "local", tmp_path / "img.tar"
    layout = tmp_path / "layout"
    asyncio.run(run_build(BuildOptions(
        context=ctx, storage=storage, differ=differ, tags=(image,), source_date_epoch=1700000000,
        outputs=(Output("tar", tar_out), Output("local", local), Output("docker", archive),
                 Output("oci", layout, tar=False))),
        BuildProgress("quiet")))
    assert len(str(storage / "builder/snapshots" / ("0" * 64) / _DEEP / "f")) > 4096
    with tarfile.open(tar_out) as tf:
        data = tf.extractfile(f"{_DEEP}/f")
        assert data is not None and data.read() == b"deep\nmore\n"
        assert tf.getmember(f"{_DEEP}/f").mtime == 1700000000  # the epoch's, as BuildKit's
        seen = tf.extractfile("seen")
        assert seen is not None and seen.read() == b"deep\n"
        linked = tf.getmember("hl")  # the step changed the group through the deep name
        assert linked.islnk() and linked.linkname == f"{_DEEP}/f"
    assert (local / "seen").read_text() == "deep\n"
    assert (local / "deep" / _NAME).is_dir()  # the rest is past PATH_MAX from here too
    (ctx / "Dockerfile").write_text(  # its layers extracted below another long storage
        f"FROM oci-layout://{layout}:1\nRUN {_MAKE}; cat $p/f > /again && echo x >> /hl\n")
    asyncio.run(run_build(BuildOptions(context=ctx, storage=storage.with_name("other"),
                                       differ=differ, outputs=(Output("local", local),)),
                          BuildProgress("quiet")))
    assert (local / "again").read_text() == "deep\nmore\n"
    assert (local / "hl").read_text() == "deep\nmore\nx\n"  # and through the short name
    assert (local / "hl").stat().st_nlink == 2
    assert f"Loaded image: {image}" in docker_engine.run("load", "-i", str(archive)).stdout
    try:
        shown = docker_engine.run_container(image, "sh", "-c", f"{_MAKE}; cat $p/f /seen /hl")
    finally:
        docker_engine.run("rmi", "--force", image, check=False)
    assert shown == "deep\nmore\ndeep\ndeep\nmore\n"
