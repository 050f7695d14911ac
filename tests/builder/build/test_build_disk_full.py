"""A build whose storage runs out of space fails with a clear error and keeps the store whole.

The storage directory is a small tmpfs, so the disk really fills up: once while COPY
writes its files, once inside a RUN.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.disks import small_filesystem

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def small_storage(tmp_path: Path) -> Iterator[Path]:
    with small_filesystem(tmp_path / "storage", "12m") as storage:
        yield storage


def _pybuild(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def _assert_store_whole(storage: Path) -> None:
    images = _pybuild("images", "--storage", str(storage))
    assert images.returncode == 0, images.stderr
    assert "local/full" not in images.stdout
    fsck = _pybuild("storage", "fsck", "--storage", str(storage))
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert list((storage / "builder" / "tmp").iterdir()) == []


@pytest.mark.parametrize("size_mib", [6, 20])
def test_copy_that_fills_the_disk_names_the_problem(small_storage: Path, tmp_path: Path,
                                                    size_mib: int) -> None:
    # 20 MiB does not fit while copying; 6 MiB fits as files but not again as a layer blob.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "big").write_bytes(os.urandom(size_mib << 20))
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY big /big\n")
    proc = _pybuild("build", "--storage", str(small_storage), "-t", "local/full:1",
                    "--progress", "plain", str(ctx))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "Dockerfile:2: COPY: no space left on device" in proc.stderr
    assert "--storage" in proc.stderr  # the fix
    _assert_store_whole(small_storage)


def test_run_that_fills_the_disk_reports_its_output(small_storage: Path, tmp_path: Path,
                                                    busybox_ref: str) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\nRUN dd if=/dev/zero of=/big bs=1M count=64\n")
    proc = _pybuild("build", "--storage", str(small_storage), "-t", "local/full:1",
                    "--progress", "plain", str(ctx))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "Dockerfile:2: RUN" in proc.stderr
    assert "No space left on device" in proc.stderr
    _assert_store_whole(small_storage)


def test_build_out_of_inodes_says_so(tmp_path: Path, busybox_ref: str) -> None:
    # Room for the bytes, not for the base image's files: df shows free space, so the
    # error says why (named before the half-extracted files are removed).
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN true\n")
    with small_filesystem(tmp_path / "storage", "64m", inodes=40) as storage:
        proc = _pybuild("build", "--storage", str(storage), "-t", "local/full:1",
                        "--progress", "plain", str(ctx))
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert "Dockerfile:2: RUN: no space left on device (no free inodes" in proc.stderr, proc.stderr
        _assert_store_whole(storage)
