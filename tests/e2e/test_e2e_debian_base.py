"""pybuild build against docker build (BuildKit) on a real Debian base: the base is a
``debootstrap --variant=minbase bookworm`` tree (from the machine's own Debian mirror,
as its apt sources name it), pushed to a ``pybuild serve``; the Dockerfile installs
packages with apt-get over the network (``--network host`` for both builders, as the
package mirror is the only host the build reaches). Both images are run by Docker and
must print the same: a file capability set by a package's maintainer script, modes and
owners, the user."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.docker_engine import DockerEngine, docker_client
from testkit.registries import RunningRegistry, pybuild_registry
from testkit.tools import require_root, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = Path(__file__).resolve().parent / "testfiles" / "debian-base"


def _mirror() -> str:
    """The Debian mirror the machine's apt uses (its first ``URIs:`` or ``deb`` line)."""
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.is_file():
            text = path.read_text()
            found = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M)
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="module")
def debian_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_root("debootstrap makes device nodes and owners")
    require_tool("debootstrap")
    rootfs = tmp_path_factory.mktemp("debian") / "rootfs"
    done = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), _mirror()],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return rootfs


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with pybuild_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def test_apt_get_on_a_debian_base_gives_what_docker_build_gives(
    docker_engine: DockerEngine, debian_rootfs: Path, registry: RunningRegistry, tmp_path: Path,
) -> None:
    tree = subprocess.run(["tar", "-C", str(debian_rootfs), "-c", "."], capture_output=True,
                          check=True).stdout
    subprocess.run([docker_client(), "import", "-", "pybuild-test/debian:bookworm"], input=tree,
                   env={**os.environ, **docker_engine.env}, capture_output=True, check=True)
    base = registry.ref("debian/base", "bookworm")
    docker_engine.run("tag", "pybuild-test/debian:bookworm", base)
    docker_engine.run("push", base)
    docker_tag, pybuild_tag = "compare-docker/debian:1", "compare-pybuild/debian:1"
    docker_engine.run("build", "--network", "host", "--build-arg", f"BASE={base}", "-t",
                      docker_tag, str(CONTEXT), build=True, timeout=900)
    archive = tmp_path / "image.tar"
    built = subprocess.run(
        [sys.executable, "-m", "builder", "build", "--network", "host", "--progress", "plain",
         "--build-arg", f"BASE={base}", "--storage", str(tmp_path / "storage"), "--output",
         f"type=docker,dest={archive},name={pybuild_tag}", str(CONTEXT)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert built.returncode == 0, built.stderr[-6000:]
    docker_engine.run("load", "-i", str(archive))
    docker_out = docker_engine.run_container(docker_tag)
    pybuild_out = docker_engine.run_container(pybuild_tag)
    assert pybuild_out == docker_out
    assert "/usr/bin/ping cap_net_raw=ep\n" in docker_out
    assert "755 app\nuid=1000(app) gid=1000(app) groups=1000(app)\n0\n" in docker_out
