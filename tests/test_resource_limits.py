"""A process short of file descriptors (``ulimit -n``): one line naming the limit and the fix.

``pybuild pull`` runs with a soft limit of open files so low that it runs out: wherever
that happens -- a socket to the registry, a pack, SQLite opening a database (which says
only "unable to open database file") -- the command prints one line saying that this
process may open only N files and how to raise the limit, and exits non-zero; not a
misleading "is the registry running?", nor a traceback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.images import make_image, make_layer, tar_files, write_oci_layout
from testkit.registries import pybuild_registry
from tests.helpers.cli import ROOT, assert_one_line_error, pybuild


@pytest.fixture(scope="module")
def image_ref(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("limits")
    layers = [make_layer(tar_files({f"f{i}": os.urandom(1 << 20)}), level=1) for i in range(5)]
    write_oci_layout(make_image(layers), tmp / "layout")
    with pybuild_registry(tmp / "registry") as running:
        ref = running.ref("limits/files", "1")
        proc = pybuild("copy", f"oci:{tmp / 'layout'}:latest", f"docker://{ref}",
                       "--storage", str(tmp / "storage"), "-q")
        assert proc.returncode == 0, proc.stderr
        yield ref


def _pull_with_limit(ref: str, storage: Path, soft: int, hard: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYBUILD_NO_FASTPATH": "1"}
    env.pop("PYBUILD_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "builder", "pull", ref, "-q", "--storage", str(storage)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


@pytest.mark.parametrize("limit", [8, 10, 12, 14, 16, 20])
def test_pull_out_of_file_descriptors_is_one_clear_line(image_ref: str, tmp_path: Path,
                                                        limit: int) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = _pull_with_limit(image_ref, tmp_path / "storage", limit, limit)
    assert_one_line_error(proc, "too many open files", f"may have {limit} open at once",
                          "(ulimit -n)", f"its hard limit is {limit} too")
    if hard == resource.RLIM_INFINITY or hard > 4096:
        proc = _pull_with_limit(image_ref, tmp_path / "storage2", limit, 4096)
        assert_one_line_error(proc, "too many open files", "raise it (ulimit -n 4096)")
