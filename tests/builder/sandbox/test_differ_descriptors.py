"""The snapshot differ holds a step's directories open while the step runs; steps run
in threads side by side, so what one step holds must not use up the descriptors the
others (and the rest of the build) need."""

from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.layers import take_snapshot
from builder.sandbox.differ import hold_directories

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def low_soft_limit() -> Iterator[int]:
    """A soft open-file limit of 512 (a login's default is 1024) under a higher hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard open-file limit ({hard}) leaves no room to raise into")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        yield 512
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _tree(root: Path, dirs: int) -> Path:
    for i in range(dirs):
        (root / f"d{i}").mkdir(parents=True)
    return root


def test_two_steps_holding_directories_leave_descriptors_for_the_build(
    tmp_path: Path, low_soft_limit: int,
) -> None:
    one = _tree(tmp_path / "one", 400)
    two = _tree(tmp_path / "two", 400)
    with contextlib.ExitStack() as held:
        # two steps of two stages, running at once
        assert held.enter_context(hold_directories(take_snapshot(one), one)) == 400
        assert held.enter_context(hold_directories(take_snapshot(two), two)) == 400
        # ... and the build still opens what it needs meanwhile
        opened = [os.open(tmp_path, os.O_RDONLY) for _ in range(200)]
        for fd in opened:
            os.close(fd)


def test_directories_past_the_hard_limit_are_not_held_to_the_last_descriptor(
    tmp_path: Path,
) -> None:
    root = _tree(tmp_path / "root", 600)
    # a hard limit of 512 cannot be raised again: set it in a process of its own
    child = subprocess.run([sys.executable, "-c", f"""
import os, resource
from pathlib import Path
from builder.layers import take_snapshot
from builder.sandbox.differ import hold_directories
resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
root = Path({str(root)!r})
with hold_directories(take_snapshot(root), root) as count:
    opened = [os.open({str(tmp_path)!r}, os.O_RDONLY) for _ in range(100)]
    print(count)
"""], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert child.returncode == 0, child.stderr[-2000:]
    assert 0 < int(child.stdout) < 600
