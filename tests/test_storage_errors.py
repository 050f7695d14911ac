"""A read-only or full storage directory: every command says so in one line, twice.

Real file systems: a read-only bind mount of a store, and small tmpfs mounts that fill
up. Each command runs twice; both runs print one line naming the path, the cause and
the fix (``--storage`` / ``PYBUILD_STORAGE``, free space), exit non-zero, and leave
nothing half-written: ``pybuild storage fsck`` stays clean and no image appears.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.images import make_image, make_layer, tar_files, write_oci_layout
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    distribution_registry,
    pybuild_argv,
)
from testkit.tools import require_root, require_tool
from tests.helpers.cli import assert_one_line_error, mount_read_only, pybuild
from tests.helpers.disks import small_filesystem

FIX = "--storage DIR or PYBUILD_STORAGE"




@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    require_tool("docker-registry")
    with distribution_registry(tmp_path_factory.mktemp("distribution")) as running:
        yield running


@pytest.fixture(scope="module")
def image_ref(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image of three 3 MiB layers in the registry (9 MiB that do not compress)."""
    tmp = tmp_path_factory.mktemp("image")
    layers = [make_layer(tar_files({f"f{i}": os.urandom(3 << 20)}), level=1) for i in range(3)]
    write_oci_layout(make_image(layers), tmp / "layout")
    ref = registry.ref("storage/errors", "1")
    proc = pybuild("copy", f"oci:{tmp / 'layout'}:latest", f"docker://{ref}",
                   "--storage", str(tmp / "storage"), "-q")
    assert proc.returncode == 0, proc.stderr
    return ref


def _context(tmp: Path, size: int = 1024) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "data").write_bytes(os.urandom(size))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY data /data\n")
    return ctx


def _assert_store_whole(storage: Path) -> None:
    images = pybuild("images", "--storage", str(storage))
    assert images.returncode == 0, images.stderr
    assert "storage/errors" not in images.stdout and "local/full" not in images.stdout
    fsck = pybuild("storage", "fsck", "--storage", str(storage))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def _twice(args: list[str], *needles: str) -> None:
    """Run twice: the same one-line error (paths aside: the file that filled up may
    differ) both times."""
    lines = [assert_one_line_error(pybuild(*args), *needles) for _ in range(2)]
    same = [re.sub(r"/\S*", "<path>", line) for line in lines]
    assert same[0] == same[1], f"the second try behaved differently: {lines}"


@pytest.fixture
def read_only_storage(tmp_path: Path, image_ref: str) -> Iterator[Path]:
    """A store that holds the pulled image and a build, mounted read-only."""
    require_root("mounting file systems needs root")
    storage = tmp_path / "storage"
    pull = pybuild("pull", image_ref, "--storage", str(storage), "-q")
    assert pull.returncode == 0, pull.stderr
    build = pybuild("build", "--storage", str(storage), "--progress", "quiet",
                    str(_context(tmp_path)))
    assert build.returncode == 0, build.stderr
    ro = tmp_path / "ro"
    mount_read_only(storage, ro)
    try:
        yield ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


# The commands that must write; those that only read work there (test_read_only_storage.py).
@pytest.mark.parametrize("command", ["build", "pull", "rmi", "tag", "builder prune", "storage gc"])
def test_read_only_storage_is_one_clear_line(read_only_storage: Path, image_ref: str,
                                             tmp_path: Path, command: str) -> None:
    args = {
        "build": ["build", "--progress", "quiet", str(_context(tmp_path))],
        "pull": ["pull", image_ref, "-q"],
        "rmi": ["rmi", image_ref],
        "tag": ["tag", image_ref, "local/retagged:1"],
        "builder prune": ["builder", "prune", "--all"],
        "storage gc": ["storage", "gc", "--grace", "0"],
    }[command]
    _twice([*args, "--storage", str(read_only_storage)],
           str(read_only_storage), "read-only file system", FIX)


@pytest.mark.parametrize("size", ["200k", "6m"])
def test_pull_into_full_storage_is_one_clear_line(tmp_path: Path, image_ref: str,
                                                  size: str) -> None:
    # 200k: not even the metadata databases fit; 6m: the layers do not.
    with small_filesystem(tmp_path / "small", size) as mnt:
        _twice(["pull", image_ref, "-q", "--storage", str(mnt)],
               "storage full", str(mnt), "no space left on device", FIX)
        if size != "200k":
            _assert_store_whole(mnt)


def test_pull_that_did_not_fit_gives_its_space_back(tmp_path: Path, image_ref: str) -> None:
    """What a failed pull wrote past its last checkpoint does not keep the disk full
    until its ingest expires: the retry after making room needs only the image's size."""
    with small_filesystem(tmp_path / "small", "6m") as mnt:
        storage = mnt / "storage"
        assert_one_line_error(pybuild("pull", image_ref, "-q", "--storage", str(storage)),
                              "storage full", "no space left on device")
        # Room for the 9 MiB image and 3 MiB to spare, not for what the failed pull wrote
        # beside it (a blob it checkpointed is resumed, not fetched again).
        subprocess.run(["mount", "-o", "remount,size=12m", str(mnt)], check=True)
        pull = pybuild("pull", image_ref, "-q", "--storage", str(storage))
        assert pull.returncode == 0, pull.stderr
        stats = pybuild("storage", "stats", "--json", "--storage", str(storage))
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["open_ingests"] == 0
        fsck = pybuild("storage", "fsck", "--storage", str(storage))
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_pull_into_storage_out_of_inodes_says_so(tmp_path: Path, image_ref: str) -> None:
    # Room for the bytes, not for the files: df shows free space, so the error says why.
    with small_filesystem(tmp_path / "small", "64m", inodes=14) as mnt:
        _twice(["pull", image_ref, "-q", "--storage", str(mnt)],
               "storage full", "no free inodes", "df -i", FIX)
        _assert_store_whole(mnt)


def test_build_into_full_storage_is_one_clear_line(tmp_path: Path) -> None:
    ctx = _context(tmp_path, 20 << 20)
    with small_filesystem(tmp_path / "small", "12m") as mnt:
        _twice(["build", "--progress", "quiet", "-t", "local/full:1", "--storage", str(mnt),
                str(ctx)], "no space left on device", "--storage")
        _assert_store_whole(mnt)


@pytest.mark.parametrize("command", ["builder prune", "storage gc", "images"])
def test_commands_on_a_full_disk_are_one_clear_line(tmp_path: Path, image_ref: str,
                                                    command: str) -> None:
    with small_filesystem(tmp_path / "small", "16m") as mnt:
        pull = pybuild("pull", image_ref, "--storage", str(mnt), "-q")
        assert pull.returncode == 0, pull.stderr
        with open(mnt / "filler", "wb") as f:  # fill what is left
            try:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            except OSError:
                pass
        _twice([*command.split(), "--storage", str(mnt)],
               "storage full", str(mnt), "no space left on device", FIX)


def _fill(mnt: Path) -> None:
    with open(mnt / "filler", "wb") as f:
        try:
            while True:
                f.write(bytes(64 << 10))
                f.flush()
        except OSError:
            pass


def test_a_full_disk_can_be_emptied_with_pybuild(tmp_path: Path, image_ref: str) -> None:
    """The store keeps room back (cas.reserve): on a disk filled up after it, listing,
    removing and collecting its images work, and free the space."""
    with small_filesystem(tmp_path / "small", "100m") as mnt:
        storage = str(mnt / "storage")
        pull = pybuild("pull", image_ref, "--storage", storage, "-q")
        assert pull.returncode == 0, pull.stderr
        _fill(mnt)
        images = pybuild("images", "--storage", storage)
        assert images.returncode == 0, images.stderr
        assert "storage/errors" in images.stdout
        for args in (["rmi", image_ref], ["storage", "gc", "--grace", "0"]):
            proc = pybuild(*args, "--storage", storage)
            assert proc.returncode == 0, proc.stderr
        fs = os.statvfs(mnt)
        assert fs.f_bavail * fs.f_frsize >= 8 << 20, "gc did not free the image's space"
        fsck = pybuild("storage", "fsck", "--storage", storage)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        (mnt / "filler").unlink()
        pull = pybuild("pull", image_ref, "--storage", storage, "-q")
        assert pull.returncode == 0, pull.stderr
        assert (mnt / "storage" / "reserve").stat().st_size > 0, "the room was not kept back again"


@pytest.mark.parametrize("kind", ["local", "oci", "docker"])
def test_output_to_a_read_only_place_is_one_clear_line(tmp_path: Path, kind: str) -> None:
    require_root("mounting file systems needs root")
    ro = tmp_path / "ro"
    (tmp_path / "empty").mkdir()
    mount_read_only(tmp_path / "empty", ro)
    try:
        dest = ro / "out"
        _twice(["build", "--progress", "quiet", "--storage", str(tmp_path / "storage"),
                "-o", f"type={kind},dest={dest}", str(_context(tmp_path))],
               str(dest), "read-only file system", "choose a destination")
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.mark.parametrize("kind", ["local", "oci", "docker"])
def test_output_to_a_full_disk_leaves_nothing(tmp_path: Path, kind: str) -> None:
    ctx = _context(tmp_path, 3 << 20)
    with small_filesystem(tmp_path / "small", "1m") as mnt:
        dest = mnt / "out"
        _twice(["build", "--progress", "quiet", "--storage", str(tmp_path / "storage"),
                "-o", f"type={kind},dest={dest}", str(ctx)],
               str(dest), "no space left on device", "choose a destination")
        assert list(mnt.iterdir()) == [], "a half-written output stayed"


@pytest.mark.parametrize("layout", ["new", "existing"])
def test_copy_to_a_full_oci_layout_leaves_nothing(tmp_path: Path, image_ref: str,
                                                  layout: str) -> None:
    with small_filesystem(tmp_path / "small", "6m") as mnt:
        dest = mnt / "layout"
        if layout == "existing":
            small = make_image([make_layer(tar_files({"small": b"kept"}))])
            write_oci_layout(small, dest, ref="kept")
        before = sorted((str(p), p.read_bytes()) for p in dest.rglob("*") if p.is_file())
        _twice(["copy", f"docker://{image_ref}", f"oci:{dest}:big", "-q",
                "--storage", str(tmp_path / "storage")],
               f"cannot write oci:{dest}", "no space left on device", "nothing of it was kept",
               "choose another destination")
        after = sorted((str(p), p.read_bytes()) for p in dest.rglob("*") if p.is_file())
        assert after == before, "the failed copy left files in the layout"
        if layout == "new":
            assert list(mnt.iterdir()) == [], "a half-written layout stayed"


def _post_blob(addr: str, data: bytes) -> int:
    return _post_blob_answer(addr, data)[0]


def _post_blob_answer(addr: str, data: bytes) -> tuple[int, str]:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    req = urllib.request.Request(f"http://{addr}/v2/full/blobs/uploads/?digest={digest}",
                                 data=data, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _assert_told_not_shown(status: int, body: str, storage: Path, log: Path, *words: str) -> None:
    """The client is told what happened, never where the server keeps its storage
    (its path, its ``--storage`` advice): that is the operator's, in the log."""
    message = json.loads(body)["errors"][0]["message"]
    assert all(w in message for w in words), message
    assert str(storage) not in body and "--storage" not in body, body
    assert str(storage) in log.read_text(), f"the log does not say where ({status})"


def _get_blob(addr: str, data: bytes) -> bytes:
    import hashlib

    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with urllib.request.urlopen(f"http://{addr}/v2/full/blobs/{digest}", timeout=60) as resp:
        return resp.read()


def test_serve_on_a_full_disk_answers_507_and_keeps_every_blob(tmp_path: Path) -> None:
    kept = [os.urandom(1 << 20) for _ in range(2)]
    with small_filesystem(tmp_path / "small", "8m") as mnt, \
            RegistryProcess("pybuild", pybuild_argv(mnt / "storage"), storage=mnt / "storage",
                            log=tmp_path / "registry.log") as running:
        for blob in kept:
            assert _post_blob(running.addr, blob) == 201
        for _ in range(2):
            status, body = _post_blob_answer(running.addr, os.urandom(12 << 20))
            assert status == 507, body
            _assert_told_not_shown(status, body, mnt, tmp_path / "registry.log",
                                   "storage full", "no space left on device", "operator")
            for blob in kept:
                assert _get_blob(running.addr, blob) == blob


def test_serve_on_read_only_packs_answers_503_and_keeps_every_blob(tmp_path: Path) -> None:
    require_root("mounting file systems needs root")
    kept = os.urandom(1 << 20)
    storage = tmp_path / "storage"
    with RegistryProcess("pybuild", pybuild_argv(storage), storage=storage,
                         log=tmp_path / "registry.log") as running:
        assert _post_blob(running.addr, kept) == 201
        # The pack directory turns read-only under the running registry (no pack is
        # open for writing between uploads, so the remount is allowed).
        mount_read_only(storage / "packs", storage / "packs")
        try:
            for _ in range(2):
                status, body = _post_blob_answer(running.addr, os.urandom(6 << 20))
                assert status == 503, body
                _assert_told_not_shown(status, body, storage, tmp_path / "registry.log",
                                       "not writable", "read-only file system")
                assert _get_blob(running.addr, kept) == kept
        finally:
            subprocess.run(["umount", "-l", str(storage / "packs")], check=False)


@pytest.mark.parametrize(("files", "free", "blocks_free", "inodes"), [
    (40, 0, 900, True), (40, 3, 900, True),  # a helper freed a few after the failed write
    (1_000_000, 500, 900, True), (1_000_000, 50_000, 900, False), (40, 30, 900, False),
    (0, 0, 900, False),
    # A big disk full of data: few inodes free in proportion, but the bytes ran out.
    (100_000_000, 60_000, 0, False), (100_000_000, 5, 0, True),
])
def test_full_disk_cause_names_inodes_when_next_to_none_are_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: int, free: int,
        blocks_free: int, inodes: bool) -> None:
    import cas.errors

    real = os.statvfs(tmp_path)
    block = 1 << 20  # 900 free blocks: 900 MiB left; 0: none (for root as for others)
    fake = os.statvfs_result((block, block, 1000, blocks_free, blocks_free,
                              files, free, free, real.f_flag, real.f_namemax))
    monkeypatch.setattr(cas.errors.os, "statvfs", lambda _path: fake)
    cause = cas.errors.full_cause(tmp_path / "gone" / "file")
    assert cause.startswith("no space left on device")
    assert ("no free inodes" in cause) is inodes
