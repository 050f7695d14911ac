"""A storage directory on a read-only file system (a backup snapshot, a CI cache volume
mounted ``ro``): the commands that only read it work, the ones that must write say so.

Real stores, filled by a real pull from CNCF Distribution and a build (and a registry's
storage, filled by a push to ``pybuild serve``), then bind-mounted read-only. ``images``,
``inspect``, ``history``, ``storage stats``, ``storage fsck``, and copies out of the store
(``copy local:... oci:``, ``docker-archive:``, ``push``) print what they print on the same
storage mounted read-write; the writing commands are refused in one line naming the path,
the read-only file system and the fix (``test_storage_errors.py``, and ``retention`` and
``serve`` below). Nothing under the storage changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.images import make_image, make_layer, tar_files, write_oci_layout
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    distribution_registry,
    get_manifest,
    pybuild_argv,
)
from testkit.tools import require_root, require_tool
from tests.helpers.cli import assert_one_line_error, mount_read_only, pybuild

FIX = "--storage DIR or PYBUILD_STORAGE"
BUILT = "local/readonly:1"


@dataclass(frozen=True)
class Snapshot:
    """A store mounted read-only at ``view``, and what the same store said read-write."""

    storage: Path  # the store, read-write
    view: Path  # the same store, mounted read-only
    pulled: str  # the image pulled into it (ref in the registry)
    pulled_digest: str
    registry: RunningRegistry
    images_json: str  # `pybuild images --json` on the writable store
    stats_json: dict[str, object]  # `pybuild storage stats --json` on the writable store
    files: list[tuple[str, int, int]]  # every file of the store: path, size, mtime


def _files(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def _ok(*args: str) -> str:
    proc = pybuild(*args)
    assert proc.returncode == 0, f"pybuild {' '.join(args)}:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snapshot]:
    require_root("mounting file systems needs root")
    require_tool("docker-registry")
    tmp = tmp_path_factory.mktemp("read-only")
    layers = [make_layer(tar_files({f"f{i}": os.urandom(1 << 20)})) for i in range(2)]
    write_oci_layout(make_image(layers), tmp / "layout")
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "data").write_bytes(os.urandom(4096))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY data /data\n")
    storage, view = tmp / "storage", tmp / "ro"
    with distribution_registry(tmp / "distribution") as registry:
        pulled = registry.ref("readonly/app", "1")
        _ok("copy", f"oci:{tmp / 'layout'}:latest", f"docker://{pulled}", "-q",
            "--storage", str(tmp / "source-storage"))
        _ok("pull", pulled, "-q", "--storage", str(storage))
        _ok("build", "--progress", "quiet", "-t", BUILT, "--storage", str(storage), str(ctx))
        digest = get_manifest(registry.addr, "readonly/app", "1").headers["docker-content-digest"]
        images_json = _ok("images", "--json", "--storage", str(storage))
        stats_json = json.loads(_ok("storage", "stats", "--json", "--storage", str(storage)))
        mount_read_only(storage, view)
        try:
            yield Snapshot(storage, view, pulled, digest, registry, images_json, stats_json,
                           _files(storage))
        finally:
            subprocess.run(["umount", "-l", str(view)], check=False)


@pytest.fixture(autouse=True)
def _nothing_changes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "snapshot" in request.fixturenames:
        shot: Snapshot = request.getfixturevalue("snapshot")
        assert _files(shot.storage) == shot.files, "the read-only storage changed"


def test_images_lists_what_the_writable_store_lists(snapshot: Snapshot) -> None:
    view = str(snapshot.view)
    assert _ok("images", "--json", "--storage", view) == snapshot.images_json
    table = _ok("images", "--storage", view)
    assert "readonly/app" in table and BUILT in table, table
    listed = _ok("images", "-q", "--no-trunc", "--storage", view).split()
    assert snapshot.pulled_digest in listed


def test_inspect_and_history_read_the_image(snapshot: Snapshot) -> None:
    view = str(snapshot.view)
    [described] = json.loads(_ok("inspect", snapshot.pulled, "--storage", view))
    assert described["Digest"] == snapshot.pulled_digest
    assert len(described["Manifest"]["layers"]) == 2
    assert _ok("inspect", BUILT, "-f", "{{.Os}}", "--storage", view).strip() == "linux"
    history = _ok("history", BUILT, "--no-trunc", "--storage", view)
    assert "COPY data /data" in history, history


def test_stats_and_fsck_check_the_store(snapshot: Snapshot) -> None:
    view = str(snapshot.view)
    assert json.loads(_ok("storage", "stats", "--json", "--storage", view)) == snapshot.stats_json
    assert "blobs:" in _ok("storage", "stats", "--storage", view)
    checked = _ok("storage", "fsck", "--storage", view)
    assert f"checked {snapshot.stats_json['blobs']} blobs" in checked and ": clean" in checked
    assert "read-only file system" in checked and "nothing can be repaired" in checked, checked
    report = json.loads(_ok("storage", "fsck", "--json", "--storage", view))
    assert report["ok"] and report["blobs_checked"] == snapshot.stats_json["blobs"]
    assert any("pybuild storage gc' needs it mounted read-write" in n for n in report["notes"])


def test_fsck_finds_damage_on_a_read_only_store(snapshot: Snapshot, tmp_path: Path) -> None:
    """A check that reports problems does so on a read-only copy too (and repairs none)."""
    damaged, view = tmp_path / "damaged", tmp_path / "damaged-ro"
    subprocess.run(["cp", "-a", str(snapshot.storage), str(damaged)], check=True)
    pack = max(damaged.glob("packs/*/*.pack"), key=lambda p: p.stat().st_size)
    with open(pack, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    mount_read_only(damaged, view)
    try:
        proc = pybuild("storage", "fsck", "--storage", str(view))
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "damaged: " in proc.stdout and "read-only file system" in proc.stdout, proc.stdout


def test_images_are_copied_out_of_the_store(snapshot: Snapshot, tmp_path: Path) -> None:
    view = str(snapshot.view)
    _ok("copy", f"local:{snapshot.pulled}", f"oci:{tmp_path / 'out'}", "-q", "--storage", view)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [snapshot.pulled_digest]
    _ok("copy", f"local:{BUILT}", f"docker-archive:{tmp_path / 'out.tar'}", "-q",
        "--storage", view)
    with tarfile.open(tmp_path / "out.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        [entry] = json.load(member)
    assert len(entry["Layers"]) == 1
    # A push reads the store only (an interrupted one starts its uploads anew).
    _ok("push", snapshot.pulled, f"docker://{snapshot.registry.addr}/readonly/copy:1", "-q",
        "--storage", view)
    pushed = get_manifest(snapshot.registry.addr, "readonly/copy", "1")
    assert pushed.status == 200
    assert pushed.headers["docker-content-digest"] == snapshot.pulled_digest


@pytest.fixture
def registry_snapshot(tmp_path: Path, snapshot: Snapshot) -> Iterator[Path]:
    """The storage of a ``pybuild serve`` that received a push, stopped, mounted read-only."""
    storage, view = tmp_path / "registry-storage", tmp_path / "registry-ro"
    with RegistryProcess("pybuild", pybuild_argv(storage), storage=storage,
                         log=tmp_path / "serve.log") as served:
        _ok("push", BUILT, f"docker://{served.addr}/served/app:1", "-q",
            "--storage", str(snapshot.view))
    mount_read_only(storage, view)
    try:
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_a_registry_snapshot_is_checked_and_not_served(registry_snapshot: Path) -> None:
    view = str(registry_snapshot)
    stats = json.loads(_ok("storage", "stats", "--json", "--storage", view))
    assert stats["blobs"] == 3, stats  # manifest, config, layer
    assert "clean" in _ok("storage", "fsck", "--storage", view)
    # No images.db (a registry's storage): no local images, as on a writable one.
    assert not (registry_snapshot / "images.db").exists()
    assert json.loads(_ok("images", "--json", "--storage", view)) == []
    for args in (["storage", "retention"], ["storage", "gc"], ["serve", "--addr", "127.0.0.1:0"]):
        assert_one_line_error(pybuild(*args, "--storage", view),
                              view, "read-only file system", "remount it read-write", FIX)
