"""End to end with a real Docker engine: ``docker load`` the docker-archive output and
``docker run --network none`` it. Starts a private dockerd (vfs, no networking set-up)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.tools import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docker_host() -> Iterator[str]:
    require_tool("docker")
    dockerd = require_tool("dockerd")
    work = Path(tempfile.mkdtemp(prefix="pbd-"))  # short: unix socket paths are limited
    host = f"unix://{work}/docker.sock"
    log = open(work / "dockerd.log", "wb")  # noqa: SIM115 (outlives this block)
    proc = subprocess.Popen(
        [dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none",
         "--storage-driver=vfs", "--data-root", str(work / "data"), "--exec-root",
         str(work / "x"), "--pidfile", str(work / "d.pid"), "-H", host],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "-H", host, "version"], check=False, capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("dockerd did not start:\n" + (work / "dockerd.log").read_text()[-3000:])
            time.sleep(0.3)
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", str(work)], check=False, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_docker_loads_and_runs_the_archive(context_of, tmp_path: Path, docker_host: str) -> None:
    ctx = context_of("docker-run")
    archive = tmp_path / "image.tar"
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "storage")}
    built = subprocess.run(
        ["python3", "-m", "builder", "build", "--progress", "plain", "-t",
         "pybuild-test/docker-run:1", "--output", f"type=docker,dest={archive}", str(ctx)],
        check=False, capture_output=True, text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    load = subprocess.run(["docker", "-H", docker_host, "load", "-i", str(archive)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert load.returncode == 0, load.stderr
    assert "pybuild-test/docker-run:1" in load.stdout
    run = subprocess.run(["docker", "-H", docker_host, "run", "--rm", "--network", "none",
                          "pybuild-test/docker-run:1"], check=False, capture_output=True,
                         text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from the context\nbuilt-by-pybuild\n"
