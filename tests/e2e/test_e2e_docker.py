"""The Docker engine against the registry under test: load, push, pull, run, build."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from testkit.clients import run, skopeo
from testkit.docker_engine import DockerEngine
from testkit.images import Image
from testkit.registries import RunningRegistry, get_manifest, http

pytestmark = pytest.mark.slow

PUSHED_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")


def _rmi(engine: DockerEngine, *refs: str) -> None:
    engine.run("rmi", "--force", *refs, check=False)


def test_push_rmi_pull_run(
    docker_engine: DockerEngine, loaded_busybox: str, registry_under_test: RunningRegistry,
    unique: str,
) -> None:
    remote = registry_under_test.ref(f"e2e/docker-{unique}", "v1")
    try:
        docker_engine.run("tag", loaded_busybox, remote)
        pushed = PUSHED_DIGEST.search(docker_engine.run("push", remote).stdout)
        assert pushed is not None
        resp = get_manifest(registry_under_test.addr, f"e2e/docker-{unique}", "v1")
        digest = resp.headers["docker-content-digest"]
        assert digest == pushed.group(1)
        assert len(resp.body) == int(pushed.group(2))
        assert resp.headers["content-type"] == "application/vnd.docker.distribution.manifest.v2+json"

        _rmi(docker_engine, remote)
        gone = docker_engine.run("image", "inspect", remote, check=False)
        assert gone.returncode != 0

        pulled = docker_engine.run("pull", remote).stdout
        assert f"Digest: {digest}" in pulled
        repo_digests = docker_engine.run(
            "image", "inspect", "--format", "{{range .RepoDigests}}{{.}} {{end}}", remote
        ).stdout.split()
        assert f"{registry_under_test.addr}/e2e/docker-{unique}@{digest}" in repo_digests

        assert docker_engine.run_container(remote, "echo", "hello") == "hello\n"
    finally:
        _rmi(docker_engine, remote)


def test_docker_pulls_and_runs_an_oci_image_pushed_by_skopeo(
    docker_engine: DockerEngine, busybox: Image, busybox_layout: Path,
    registry_under_test: RunningRegistry, unique: str,
) -> None:
    remote = registry_under_test.ref(f"e2e/oci-{unique}", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:latest",
               f"docker://{remote}"))
    try:
        pulled = docker_engine.run("pull", remote).stdout
        assert f"Digest: {busybox.manifest_digest}" in pulled
        out = docker_engine.run_container(remote, "sh", "-c", "cat /etc/passwd; ls /bin/sh")
        assert out.startswith("root:x:0:0:")
        assert out.endswith("/bin/sh\n")
    finally:
        _rmi(docker_engine, remote)


def test_buildkit_build_from_the_registry_and_push_back(
    docker_engine: DockerEngine, busybox: Image, busybox_layout: Path, registry_under_test: RunningRegistry,
    tmp_path: Path, unique: str,
) -> None:
    base = registry_under_test.ref(f"e2e/base-{unique}", "v1")
    built = registry_under_test.ref(f"e2e/built-{unique}", "v1")
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{busybox_layout}:latest",
               f"docker://{base}"))
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {base}\nRUN echo built > /built.txt\nCMD [\"cat\", \"/built.txt\"]\n"
    )
    try:
        docker_engine.run("build", "--network", "none", "-t", built, str(context), build=True)
        docker_engine.run("push", built)
        _rmi(docker_engine, built, base)
        docker_engine.run("pull", built)
        assert docker_engine.run_container(built) == "built\n"
        # The built image is the base's layer plus one.
        resp = get_manifest(registry_under_test.addr, f"e2e/built-{unique}", "v1")
        assert resp.status == 200
        manifest = json.loads(resp.body)
        assert len(manifest["layers"]) == 2
        config = http(registry_under_test.addr, "GET",
                      f"/v2/e2e/built-{unique}/blobs/{manifest['config']['digest']}")
        assert config.status == 200
        # Docker may recompress the base layer, but its uncompressed content is the base's.
        assert json.loads(config.body)["rootfs"]["diff_ids"][0] == busybox.layers[0].diff_id
    finally:
        _rmi(docker_engine, built, base)
