"""A really small filesystem, to test what happens when the disk fills up."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill_up", "small_filesystem"]


@contextmanager
def small_filesystem(path: Path, size: str, inodes: int | None = None) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"4m"``) on ``path`` (created), with room for at most
    ``inodes`` files and directories if given; yield it; unmount it.

    Needs root: skipped without it, a failure when ``CI`` is set.
    """
    if os.geteuid() != 0:
        message = "mounting a small tmpfs to fill the disk needs root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (f",nr_inodes={inodes}" if inodes is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(space: Path) -> Path:
    """Take every free byte of ``space`` with one file (written in ever smaller writes, to
    the last block); its path."""
    filler = space / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 4096, 512):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass
    return filler
