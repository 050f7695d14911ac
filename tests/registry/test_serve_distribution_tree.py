"""``pybuild serve`` on the root directory of a CNCF Distribution registry, as a
Distribution ``config.yml`` names it: refused, naming the way to move the images, rather
than serving an empty registry (every image gone, to its clients) from that directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testkit.registries import free_port


def serve(storage: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, "-m", "builder", "serve", "--addr", f"127.0.0.1:{free_port()}",
         "--storage", str(storage)],
        capture_output=True, text=True, timeout=20, cwd=cwd, env=env, check=False)


def test_serve_refuses_a_distribution_root_directory(tmp_path: Path) -> None:
    storage = tmp_path / "registry"
    repo = storage / "docker" / "registry" / "v2" / "repositories" / "team" / "app"
    (repo / "_manifests" / "tags" / "1").mkdir(parents=True)
    (storage / "docker" / "registry" / "v2" / "blobs" / "sha256").mkdir(parents=True)
    done = serve(storage, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "holds a CNCF Distribution registry (docker/registry/v2)" in done.stderr, done.stderr
    assert "pybuild copy --all-repositories --all-platforms" in done.stderr
    assert sorted(p.name for p in storage.iterdir()) == ["docker"]  # nothing added beside it
