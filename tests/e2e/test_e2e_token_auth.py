"""``pybuild serve`` with its built-in token server, driven by real clients: ``docker
login``/``push``/``pull``/``run``, skopeo, podman, containerd's ``ctr`` (which asks for
tokens with the OAuth2 POST form) and pybuild's own client get tokens at
``/token`` and use them; a robot account pushes from "CI"; what the policy denies fails
and leaves the registry unchanged."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from testkit.clients import ContainerStorage, podman, run, skopeo
from testkit.containerd import running_containerd
from testkit.docker_engine import DockerEngine
from testkit.images import Image, write_oci_layout
from testkit.registries import RunningRegistry, http, pybuild_serve_available, pybuild_token_registry

pytestmark = pytest.mark.slow

POLICY = Path(__file__).parent / "testfiles" / "token-policy.yaml"
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    if not pybuild_serve_available():
        pytest.fail("python3 -m builder serve does not start")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(
        f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n" for u, p in PASSWORDS.items()
    ))
    with pybuild_token_registry(tmp_path / "pybuild", htpasswd, POLICY) as running:
        yield running


def tags(registry: RunningRegistry, user: str, repo: str) -> list[str]:
    """The tags of ``repo`` as ``user`` sees them, through the token flow."""
    basic = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    got = http(registry.addr, "GET", f"/token?service=pybuild-registry&scope=repository:{repo}:pull",
               headers={"Authorization": f"Basic {basic}"})
    assert got.status == 200, got.body
    token = json.loads(got.body)["token"]
    resp = http(registry.addr, "GET", f"/v2/{repo}/tags/list", headers={"Authorization": f"Bearer {token}"})
    if resp.status == 404:
        return []
    assert resp.status == 200, resp.body
    return list(json.loads(resp.body)["tags"])


def pybuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "builder", *args], env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=300, check=False,
    )


def test_docker_login_push_pull_run_and_a_denied_push(
    docker_engine: DockerEngine, loaded_busybox: str, registry: RunningRegistry, tmp_path: Path, unique: str,
) -> None:
    def engine_as(name: str) -> DockerEngine:
        return dataclasses.replace(
            docker_engine, env={**docker_engine.env, "DOCKER_CONFIG": str(tmp_path / f"docker-{name}")}
        )

    alice, bob, anonymous = engine_as("alice"), engine_as("bob"), engine_as("anonymous")
    ref = registry.ref(f"team/app-{unique}", "v1")
    public = registry.ref(f"lib/public/base-{unique}", "v1")
    denied = registry.ref(f"team/app-{unique}", "bob")
    from_ci = registry.ref(f"team/app-{unique}", "ci")
    try:
        # Anonymous callers get a token too, without the right to push.
        docker_engine.run("tag", loaded_busybox, ref)
        refused = anonymous.run("push", ref, check=False)
        assert refused.returncode != 0

        login = alice.run("login", "-u", "alice", "--password-stdin", registry.addr, input=b"wonderland\n")
        assert "Login Succeeded" in login.stdout
        wrong = bob.run("login", "-u", "bob", "--password-stdin", registry.addr, input=b"nope\n", check=False)
        assert wrong.returncode != 0
        alice.run("push", ref)
        docker_engine.run("tag", loaded_busybox, public)
        alice.run("push", public)
        docker_engine.run("rmi", ref, public)

        bob.run("login", "-u", "bob", "--password-stdin", registry.addr, input=b"builder\n")
        bob.run("pull", ref)
        assert bob.run_container(ref, "echo", "pulled with a token") == "pulled with a token\n"
        bob.run("tag", ref, denied)
        refused = bob.run("push", denied, check=False)
        assert refused.returncode != 0
        assert "denied" in refused.stderr or "unauthorized" in refused.stderr, refused.stderr
        assert tags(registry, "alice", f"team/app-{unique}") == ["v1"]

        anonymous.run("pull", public)  # the policy lets everyone pull */public/**
        assert anonymous.run("pull", ref, check=False).returncode != 0

        # A robot account logs in with its secret as password, as a CI job does.
        made = pybuild("robot", "create", "ci", "--scope", "repository:team/**:pull,push", "--expires", "1h",
                       "--storage", str(registry.storage))
        assert made.returncode == 0, made.stderr
        robot = engine_as("robot")
        robot.run("login", "-u", "robot+ci", "--password-stdin", registry.addr, input=made.stdout.encode())
        docker_engine.run("tag", loaded_busybox, from_ci)
        robot.run("push", from_ci)
        assert tags(registry, "alice", f"team/app-{unique}") == ["ci", "v1"]
    finally:
        docker_engine.run("rmi", "--force", ref, public, denied, from_ci, check=False)


def test_skopeo_podman_and_pybuild_through_tokens(
    busybox: Image, registry: RunningRegistry, container_storage: ContainerStorage, tmp_path: Path,
) -> None:
    layout = write_oci_layout(busybox, tmp_path / "layout")
    ref = registry.ref("team/app", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "alice:wonderland",
               f"oci:{layout}:latest", f"docker://{ref}"))
    public = registry.ref("lib/public/base", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "alice:wonderland",
               f"oci:{layout}:latest", f"docker://{public}"))

    # skopeo: bob may pull but not push; anonymous callers only pull public repositories.
    out = tmp_path / "out"
    run(skopeo("copy", "--src-tls-verify=false", "--src-creds", "bob:builder", f"docker://{ref}", f"oci:{out}:v1"))
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == busybox.manifest_digest
    pushed = run(skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "bob:builder",
                        f"oci:{layout}:latest", f"docker://{registry.ref('team/app', 'bob')}"), check=False)
    assert pushed.returncode != 0
    assert tags(registry, "alice", "team/app") == ["v1"]
    run(skopeo("inspect", "--tls-verify=false", "--no-creds", f"docker://{public}"))
    private = run(skopeo("inspect", "--tls-verify=false", "--no-creds", f"docker://{ref}"), check=False)
    assert private.returncode != 0

    # podman
    run(podman(container_storage, "pull", "--quiet", "--tls-verify=false", "--creds", "bob:builder", ref))
    digest = run(podman(container_storage, "image", "inspect", "--format", "{{.Digest}}", ref)).stdout.strip()
    assert digest == busybox.manifest_digest

    # pybuild's client: login (wrong, then right), pull with what login saved ...
    saved = {"DOCKER_CONFIG": str(tmp_path / "pybuild-docker-config")}
    wrong = subprocess.run([sys.executable, "-m", "builder", "login", registry.addr, "-u", "bob", "--password-stdin"],
                           input="nope\n", env={**os.environ, **saved}, capture_output=True, text=True, timeout=120,
                           check=False)
    assert wrong.returncode != 0
    login = subprocess.run([sys.executable, "-m", "builder", "login", registry.addr, "-u", "bob", "--password-stdin"],
                           input="builder\n", env={**os.environ, **saved}, capture_output=True, text=True,
                           timeout=120, check=False)
    assert login.returncode == 0, login.stderr
    pulled = pybuild("pull", ref, "--storage", str(tmp_path / "saved-store"), env=saved)
    assert pulled.returncode == 0, pulled.stderr

    # ... and with a user's credentials and a robot's from the environment.
    as_bob = {"PYBUILD_REGISTRY_USER": "bob", "PYBUILD_REGISTRY_PASSWORD": "builder",
              "DOCKER_CONFIG": str(tmp_path / "no-docker-config")}
    pulled = pybuild("pull", ref, "--storage", str(tmp_path / "store"), "--json", env=as_bob)
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout.splitlines()[-1])["digest"] == busybox.manifest_digest
    made = pybuild("robot", "create", "ci", "--scope", "repository:team/**:pull,push", "--expires", "1h",
                   "--storage", str(registry.storage))
    assert made.returncode == 0, made.stderr
    as_robot = {**as_bob, "PYBUILD_REGISTRY_USER": "robot+ci", "PYBUILD_REGISTRY_PASSWORD": made.stdout.strip()}
    target = registry.ref("team/ci", "build-1")
    copied = pybuild("copy", f"oci:{layout}:latest", target, "--storage", str(tmp_path / "store"), env=as_robot)
    assert copied.returncode == 0, copied.stderr
    assert tags(registry, "alice", "team/ci") == ["build-1"]
    assert pybuild("robot", "revoke", "ci", "--storage", str(registry.storage)).returncode == 0
    time.sleep(1.1)  # the server looks at the robots file once a second at most
    again = pybuild("copy", f"oci:{layout}:latest", registry.ref("team/ci", "build-2"),
                    "--storage", str(tmp_path / "store"), env=as_robot)
    assert again.returncode != 0
    assert tags(registry, "alice", "team/ci") == ["build-1"]


def test_containerd_ctr_pull_through_tokens(busybox: Image, registry: RunningRegistry, tmp_path: Path) -> None:
    layout = write_oci_layout(busybox, tmp_path / "layout")
    ref = registry.ref("team/app", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "alice:wonderland",
               f"oci:{layout}:latest", f"docker://{ref}"))
    with running_containerd() as containerd:
        pull = ["image", "pull", "--plain-http", "--snapshotter", "native"]
        wrong = run(containerd.ctr(*pull, "--user", "bob:wrong", ref), check=False)
        assert wrong.returncode != 0 and "401" in wrong.stderr
        anonymous = run(containerd.ctr(*pull, ref), check=False)
        assert anonymous.returncode != 0 and "insufficient_scope" in anonymous.stderr
        run(containerd.ctr(*pull, "--user", "bob:builder", ref))
        listed = run(containerd.ctr("image", "ls", "-q")).stdout.split()
        assert ref in listed
        digest = run(containerd.ctr("image", "ls")).stdout
        assert busybox.manifest_digest in digest
