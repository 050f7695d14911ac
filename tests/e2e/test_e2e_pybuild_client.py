"""pybuild's client with real peers: Docker pulls and runs what pybuild pushed, loads what
pybuild wrote as a docker archive, and pybuild pulls what Docker pushed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.docker_engine import DockerEngine
from testkit.images import Image
from testkit.registries import RunningRegistry

pytestmark = pytest.mark.slow


def pybuild(storage: Path, *args: str) -> dict[str, object]:
    """Run ``pybuild ARGS --storage STORAGE --json``; returns the final ``result`` event."""
    proc = subprocess.run(
        [sys.executable, "-m", "builder", *args, "--storage", str(storage), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_docker_runs_an_image_pybuild_pushed(
    docker_engine: DockerEngine, busybox: Image, busybox_layout: Path,
    registry_under_test: RunningRegistry, unique: str, tmp_path: Path,
) -> None:
    remote = registry_under_test.ref(f"e2e/client-{unique}", "v1")
    result = pybuild(tmp_path / "store", "copy", f"oci:{busybox_layout}:latest", f"docker://{remote}")
    assert result["digest"] == busybox.manifest_digest
    try:
        pulled = docker_engine.run("pull", remote).stdout
        assert f"Digest: {busybox.manifest_digest}" in pulled
        assert docker_engine.run_container(remote, "echo", "hello") == "hello\n"
    finally:
        docker_engine.run("rmi", "--force", remote, check=False)


def test_pybuild_pulls_what_docker_pushed_and_docker_loads_its_archive(
    docker_engine: DockerEngine, loaded_busybox: str, registry_under_test: RunningRegistry,
    unique: str, tmp_path: Path,
) -> None:
    remote = registry_under_test.ref(f"e2e/client-dk-{unique}", "v1")
    archived = f"pybuild-e2e/archived-{unique}:v1"
    try:
        docker_engine.run("tag", loaded_busybox, remote)
        docker_engine.run("push", remote)
        pulled = pybuild(tmp_path / "store", "pull", remote)
        assert set(pulled["blobs"].values()) == {"pulled"}  # type: ignore[union-attr]
        archive = tmp_path / "image.tar"
        pybuild(tmp_path / "store", "copy", f"local:{remote}",
                f"docker-archive:{archive}:{archived}")
        docker_engine.run("rmi", "--force", remote, check=False)
        out = docker_engine.run("load", "-i", str(archive)).stdout
        assert archived in out
        assert docker_engine.run_container(archived, "echo", "loaded") == "loaded\n"
    finally:
        docker_engine.run("rmi", "--force", remote, archived, check=False)
