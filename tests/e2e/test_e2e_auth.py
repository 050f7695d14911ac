"""Basic-auth registries with real clients: ``docker login`` and ``docker push`` next to
``pybuild push`` / ``pybuild pull`` (using the credentials docker login saved) at ``-j 1``
and ``-j 16``, against CNCF Distribution with ``auth.htpasswd`` and ``pybuild serve
--htpasswd``; Docker pulls and runs what pybuild pushed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from testkit.docker_engine import DockerEngine
from testkit.images import (
    Image,
    make_image,
    make_layer,
    tar_files,
    write_oci_layout,
)
from testkit.registries import (
    RunningRegistry,
    get_manifest,
    pybuild_serve_available,
    registry_of_kind,
)
from testkit.tools import require_tool

pytestmark = pytest.mark.slow

LAYERS = 24  # small layers on top of busybox: a push at -j 16 has many requests at once


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return path


@pytest.fixture(params=["distribution", "pybuild"])
def auth_registry(request: pytest.FixtureRequest, tmp_path: Path,
                  htpasswd: Path) -> Iterator[RunningRegistry]:
    """A fresh registry of each kind that requires basic auth (alice / wonderland)."""
    if request.param == "distribution":
        require_tool("docker-registry")
    elif not pybuild_serve_available():
        pytest.fail("python3 -m builder serve does not start")
    with registry_of_kind(request.param, tmp_path / request.param, htpasswd) as running:
        yield running


@pytest.fixture
def many_layers(busybox: Image) -> Image:
    """busybox plus LAYERS one-file layers; ``cat /layers/N`` prints N."""
    layers = [busybox.layers[0]] + [
        make_layer(tar_files({f"layers/{i}": f"{i}\n".encode()})) for i in range(LAYERS)
    ]
    return make_image(layers, cmd=("sh",))


def pybuild(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pybuild ARGS`` with Docker's client config in ``config`` (where docker login wrote)."""
    return subprocess.run(
        [sys.executable, "-m", "builder", *args], env={**os.environ, "DOCKER_CONFIG": str(config)},
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_docker_login_then_pybuild_push_and_pull_at_any_concurrency(
    docker_engine: DockerEngine, loaded_busybox: str, auth_registry: RunningRegistry,
    many_layers: Image, tmp_path: Path, unique: str,
) -> None:
    config = tmp_path / "docker-config"  # private: neither uses nor touches the user's
    engine = dataclasses.replace(docker_engine, env={**docker_engine.env, "DOCKER_CONFIG": str(config)})
    addr = auth_registry.addr
    layout = write_oci_layout(many_layers, tmp_path / "layout")
    docker_ref = auth_registry.ref(f"e2e/docker-{unique}", "v1")
    pulled_back: list[str] = []
    try:
        # Without credentials: one line saying there are none and what to run.
        store = tmp_path / "store"
        local = auth_registry.ref(f"e2e/pybuild-{unique}", "j1")
        copied = pybuild(config, "copy", f"oci:{layout}:latest", f"local:{local}", "--storage", str(store))
        assert copied.returncode == 0, copied.stderr
        anonymous = pybuild(config, "push", local, "--storage", str(store))
        assert anonymous.returncode == 1
        assert anonymous.stderr.strip().splitlines() == [anonymous.stderr.strip()]
        assert "no credentials" in anonymous.stderr and f"pybuild login {addr}" in anonymous.stderr

        login = engine.run("login", "-u", "alice", "--password-stdin", addr, input=b"wonderland\n")
        assert "Login Succeeded" in login.stdout
        engine.run("tag", loaded_busybox, docker_ref)
        engine.run("push", docker_ref)

        for jobs in ("1", "16"):
            ref = auth_registry.ref(f"e2e/pybuild-{unique}", f"j{jobs}")
            if jobs != "1":
                pybuild(config, "copy", f"local:{local}", f"local:{ref}", "--storage", str(store))
            pushed = pybuild(config, "push", ref, "-j", jobs, "--storage", str(store), "--json")
            assert pushed.returncode == 0, pushed.stderr
            result = json.loads(pushed.stdout.splitlines()[-1])
            assert result["digest"] == many_layers.manifest_digest
            resp = get_manifest(addr, f"e2e/pybuild-{unique}", f"j{jobs}")
            assert resp.status == 401  # the registry really asks for credentials

            pulled = pybuild(config, "pull", ref, "-j", jobs, "--storage", str(tmp_path / f"pull-{jobs}"),
                             "--json")
            assert pulled.returncode == 0, pulled.stderr
            assert json.loads(pulled.stdout.splitlines()[-1])["digest"] == many_layers.manifest_digest

            # What pybuild pushed, Docker pulls with the same login and runs.
            engine.run("pull", ref)
            pulled_back.append(ref)
            shown = engine.run_container(ref, "sh", "-c", f"cat /layers/0 /layers/{LAYERS - 1}")
            assert shown == f"0\n{LAYERS - 1}\n"

        # And pybuild pulls what Docker pushed.
        pulled = pybuild(config, "pull", docker_ref, "-j", "16", "--storage", str(tmp_path / "from-docker"))
        assert pulled.returncode == 0, pulled.stderr
    finally:
        engine.run("rmi", "--force", docker_ref, *pulled_back, check=False)


def test_pybuild_login_then_build_from_and_push_to_a_basic_auth_registry(
    docker_engine: DockerEngine, auth_registry: RunningRegistry, busybox: Image,
    tmp_path: Path, unique: str,
) -> None:
    """``build`` pulls its base and ``--push``es its result with the same client: both
    authenticate, with every layer pushed at once."""
    config = tmp_path / "docker-config"
    engine = dataclasses.replace(docker_engine, env={**docker_engine.env, "DOCKER_CONFIG": str(config)})
    addr = auth_registry.addr
    login = subprocess.run(
        [sys.executable, "-m", "builder", "login", addr, "-u", "alice", "--password-stdin"],
        input="wonderland\n", env={**os.environ, "DOCKER_CONFIG": str(config)},
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert login.returncode == 0, login.stderr
    base = auth_registry.ref(f"e2e/base-{unique}", "v1")
    layout = write_oci_layout(busybox, tmp_path / "layout")
    seeded = pybuild(config, "copy", f"oci:{layout}:latest", base, "--storage", str(tmp_path / "seed"))
    assert seeded.returncode == 0, seeded.stderr
    context = tmp_path / "context"
    context.mkdir()
    copies = []
    for i in range(LAYERS):
        (context / f"f{i}").write_text(f"{i}\n")
        copies.append(f"COPY f{i} /layers/{i}\n")
    (context / "Dockerfile").write_text(f"FROM {base}\n" + "".join(copies))
    target = auth_registry.ref(f"e2e/built-{unique}", "v1")
    built = pybuild(config, "build", "--progress", "plain", "-t", target, "--push", str(context),
                    "--storage", str(tmp_path / "store"))
    assert built.returncode == 0, built.stderr
    try:
        engine.run("login", "-u", "alice", "--password-stdin", addr, input=b"wonderland\n")
        engine.run("pull", target)
        assert engine.run_container(target, "cat", f"/layers/{LAYERS - 1}") == f"{LAYERS - 1}\n"
    finally:
        engine.run("rmi", "--force", target, check=False)
