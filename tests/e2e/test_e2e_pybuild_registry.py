"""Docker against ``pybuild serve`` specifically: ``docker login`` with htpasswd, and one
copy of the bytes for an image pushed to two repositories.

(Push/pull/run, skopeo round trips and podman pulls run against pybuild's registry through
the ``registry_under_test`` parametrization of the other e2e modules.)
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from testkit.docker_engine import DockerEngine
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    get_manifest,
    pybuild_argv,
)

ROOT = Path(__file__).resolve().parents[2]
PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")


def _pybuild(workdir: Path, *extra: str) -> RegistryProcess:
    storage = workdir / "storage"
    base = pybuild_argv(storage)
    return RegistryProcess(
        "pybuild", lambda addr: [*base(addr), *extra],
        storage=storage, log=workdir / "registry.log",  # tests/conftest.py sets PYTHONPATH
    )


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return path


@pytest.fixture
def auth_registry(tmp_path: Path, htpasswd: Path) -> Iterator[RunningRegistry]:
    with _pybuild(tmp_path / "auth", "--htpasswd", str(htpasswd)) as running:
        yield running


@pytest.fixture
def pybuild_registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    with _pybuild(tmp_path / "plain") as running:
        yield running


def test_docker_login_with_htpasswd(
    docker_engine: DockerEngine, loaded_busybox: str, auth_registry: RunningRegistry,
    tmp_path: Path, unique: str,
) -> None:
    # A private client config, so the login neither uses nor touches the user's.
    engine = dataclasses.replace(
        docker_engine, env={**docker_engine.env, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    )
    remote = auth_registry.ref(f"e2e/auth-{unique}", "v1")
    try:
        engine.run("tag", loaded_busybox, remote)
        anonymous = engine.run("push", remote, check=False)
        assert anonymous.returncode != 0
        assert "no basic auth credentials" in anonymous.stderr + anonymous.stdout

        wrong = engine.run("login", "-u", "alice", "--password-stdin", auth_registry.addr,
                           input=b"queen of hearts\n", check=False)
        assert wrong.returncode != 0
        assert "401" in wrong.stderr + wrong.stdout

        login = engine.run("login", "-u", "alice", "--password-stdin", auth_registry.addr,
                           input=b"wonderland\n")
        assert "Login Succeeded" in login.stdout
        engine.run("push", remote)
        engine.run("rmi", "--force", remote)
        engine.run("pull", remote)
        assert engine.run_container(remote, "echo", "logged in") == "logged in\n"

        engine.run("logout", auth_registry.addr)
        engine.run("rmi", "--force", remote)
        denied = engine.run("pull", remote, check=False)
        assert denied.returncode != 0
    finally:
        engine.run("rmi", "--force", remote, check=False)


def test_same_image_in_two_repositories_is_stored_once(
    docker_engine: DockerEngine, loaded_busybox: str, pybuild_registry: RunningRegistry,
    unique: str,
) -> None:
    first = pybuild_registry.ref(f"e2e/team-a-{unique}", "v1")
    second = pybuild_registry.ref(f"e2e/team-b-{unique}", "v1")
    try:
        docker_engine.run("tag", loaded_busybox, first)
        docker_engine.run("tag", loaded_busybox, second)
        docker_engine.run("push", first)
        pushed = docker_engine.run("push", second).stdout
        # The second push mounts the layers from the first repository instead of uploading.
        assert "Mounted from" in pushed or "Layer already exists" in pushed, pushed
    finally:
        docker_engine.run("rmi", "--force", first, second, check=False)

    manifest = json.loads(get_manifest(pybuild_registry.addr, f"e2e/team-a-{unique}", "v1").body)
    sizes = [manifest["config"]["size"], *(layer["size"] for layer in manifest["layers"])]
    body_b = get_manifest(pybuild_registry.addr, f"e2e/team-b-{unique}", "v1").body
    assert json.loads(body_b) == manifest

    stats = json.loads(subprocess.run(
        [sys.executable, "-m", "builder", "storage", "stats", "--json",
         "--storage", str(pybuild_registry.storage)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout)
    manifest_len = len(get_manifest(pybuild_registry.addr, f"e2e/team-a-{unique}", "v1").body)
    # Config, layers and manifest, each once, although both repositories hold them all.
    assert stats["blobs"] == len(sizes) + 1
    assert stats["logical_bytes"] == sum(sizes) + manifest_len
    assert stats["physical_bytes"] <= stats["logical_bytes"]
