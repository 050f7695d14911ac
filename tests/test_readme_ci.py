"""The README's CI jobs work: their commands, run as a non-root user against a local registry.

The GitHub Actions and GitLab CI jobs are read from README.md's ``yaml`` blocks. Their
``run:`` steps and ``script:`` lines are run by ``bash -eo pipefail`` as a throw-away user with a
subordinate id range (``testkit.users``), as CI runners are not root. Lines that install
pybuild (``pip install``) or set the machine up (``sudo``) are skipped: the test provides
what they would (a ``pybuild`` on ``PATH`` running this checkout, ``uidmap``, the user's
range, binfmt_misc for arm64, as ``docker/setup-qemu-action`` does). The registry host is
a ``pybuild serve --htpasswd`` on 127.0.0.1 and the CI system's variables are set as the
CI system would. The project is a Dockerfile on a base that is an index of amd64 and arm64
busybox (Debian's busybox-static for arm64).

Each job runs twice, each time as a fresh runner (a new home and data directory: empty
storage). The second run must take every step from the registry cache the first pushed:
its RUN step writes random bytes, so a step that ran again would give other layers. The
pushed tag must be an index of both platforms.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import yaml

from registry.oci import Platform
from testkit.emulation import ensure_emulator, foreign_busybox
from testkit.images import make_image, make_layer, tar_directory, write_oci_index_layout
from testkit.registries import MANIFEST_ACCEPT, Response, RunningRegistry, http, pybuild_registry
from testkit.rootfs import busybox_path, make_busybox_rootfs
from testkit.tools import require_root, require_tool
from testkit.users import SystemUser, python_for, shared_workspace, temporary_user

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
USER, PASSWORD = "ci", "ci-secret"
# Where each job pushes: the GitHub job's IMAGE (ghcr.io replaced), GitLab's project image.
REPOS = {"github": "example/app", "gitlab": "gitlab/app"}
SETUP = ("sudo ", "pip install")  # the machine's set-up, which the test provides
BUILD_FLAGS = ("--platform linux/amd64,linux/arm64", "--cache-from type=registry,ref=",
               "--cache-to type=registry,ref=", ",mode=max", "--push")

DOCKERFILE = """FROM {base}
COPY app.txt /app/app.txt
RUN uname -m > /app/machine && head -c 32 /dev/urandom | od -An -tx1 > /app/random
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(Platform.host().architecture != "amd64",
                       reason="the jobs' foreign platform is arm64"),
]


def _jobs() -> dict[str, dict]:
    """``{"github": workflow, "gitlab": pipeline}`` parsed from README.md's yaml blocks."""
    blocks = [yaml.safe_load(b) for b in
              re.findall(r"^```yaml\n(.*?)^```", README.read_text(), re.S | re.M)]
    github = [b for b in blocks if "jobs" in b]
    gitlab = [b for b in blocks if any(isinstance(j, dict) and "script" in j
                                       for j in b.values())]
    assert len(github) == 1 and len(gitlab) == 1, "README.md: one job of each CI system"
    return {"github": github[0], "gitlab": gitlab[0]}


def _commands(system: str, doc: dict) -> tuple[list[str], dict[str, str]]:
    """The job's shell commands and its variables, as the CI system gives them."""
    if system == "github":
        (job,) = doc["jobs"].values()
        uses = [s["uses"].split("@")[0] for s in job["steps"] if "uses" in s]
        assert uses == ["actions/checkout", "docker/setup-qemu-action"], uses
        env = dict(job.get("env", {}))
        commands = []
        for step in job["steps"]:
            if "run" in step:
                assert set(step.get("env", {})) <= {"TOKEN"}, step
                env.update(step.get("env", {}))
                commands.append(step["run"])
        return commands, env
    (job,) = (j for j in doc.values() if isinstance(j, dict) and "script" in j)
    return [*job.get("before_script", []), *job["script"]], dict(job.get("variables", {}))


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A directory the test user can reach (pytest's are private)."""
    require_root("the CI jobs run as a user this test creates")
    with shared_workspace("pybuild-readme-ci-", "/var/tmp") as ws:
        yield ws


@pytest.fixture(scope="module")
def user() -> Iterator[SystemUser]:
    for tool in ("newuidmap", "newgidmap", "bwrap"):
        require_tool(tool)
    with temporary_user("pybuild-ci") as u:
        yield u


@pytest.fixture(scope="module")
def registry(workspace: Path) -> Iterator[RunningRegistry]:
    """``pybuild serve`` with basic auth, holding ``ci/busybox:latest`` for two platforms."""
    ensure_emulator("arm64")
    require_tool("skopeo")
    htpasswd = workspace / "htpasswd"
    htpasswd.write_text(f"{USER}:" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode())
    images = {}
    for plat, busybox in (("linux/amd64", None),
                          ("linux/arm64", foreign_busybox("arm64", workspace / "debs"))):
        arch = plat.split("/")[1]
        rootfs = make_busybox_rootfs(workspace / f"rootfs-{arch}", busybox,
                                     applets_of=busybox_path())
        images[plat] = make_image([make_layer(tar_directory(rootfs))], cmd=("sh",),
                                  architecture=arch, created_by=[f"busybox ({arch})"])
    layout = write_oci_index_layout(images, workspace / "base")
    with pybuild_registry(workspace / "registry", htpasswd=htpasswd) as running:
        subprocess.run(["skopeo", "copy", "--all", "--dest-tls-verify=false",
                        "--dest-creds", f"{USER}:{PASSWORD}", f"oci:{layout}:latest",
                        f"docker://{running.ref('ci/busybox')}"],
                       check=True, capture_output=True, timeout=120)
        yield running


def _runner(workspace: Path, user: SystemUser, name: str) -> dict[str, str]:
    """A fresh runner for ``user``: its home and data directory (the store) are empty;
    ``pybuild`` on PATH runs this checkout."""
    python, env = python_for(user)
    runner = workspace / name
    bin_dir = runner / "bin"
    bin_dir.mkdir(parents=True)
    wrapper = bin_dir / "pybuild"
    wrapper.write_text(f'#!/bin/sh\nexec {" ".join(python)} -m builder "$@"\n')
    wrapper.chmod(0o755)
    for sub in ("home", "data"):
        (runner / sub).mkdir()
        os.chown(runner / sub, user.uid, user.gid)
    return {**env, "HOME": str(runner / "home"), "XDG_DATA_HOME": str(runner / "data"),
            "USER": user.name, "PATH": f"{bin_dir}:{env['PATH']}"}


def _project(workspace: Path, base: str) -> Path:
    project = workspace / "project"
    if not project.exists():
        project.mkdir()
        (project / "Dockerfile").write_text(DOCKERFILE.format(base=base))
        (project / "app.txt").write_text("the application\n")
        subprocess.run(["chmod", "-R", "a+rX", str(project)], check=True)
    return project


def _ci_variables(system: str, registry: RunningRegistry, run: int) -> dict[str, str]:
    if system == "github":
        return {"GITHUB_SHA": f"{run:040x}", "GITHUB_ACTOR": USER, "CI": "true",
                "GITHUB_PATH": "/dev/null"}
    return {"CI_REGISTRY": registry.addr, "CI_REGISTRY_IMAGE": f"{registry.addr}/{REPOS[system]}",
            "CI_REGISTRY_USER": USER, "CI_REGISTRY_PASSWORD": PASSWORD,
            "CI_COMMIT_SHORT_SHA": f"{run:08x}", "CI": "true"}


def _expand(value: str, variables: dict[str, str], registry: RunningRegistry) -> str:
    """A variable's value as the CI system gives it: ``${{ secrets.X }}`` (GitHub) and
    ``$VAR`` (GitLab) expanded, the registry host replaced by the local registry."""
    value = re.sub(r"\$\{\{\s*secrets\.\w+\s*\}\}", PASSWORD, value)
    assert "${{" not in value, value
    value = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), value)
    return value.replace("ghcr.io", registry.addr)


def _run_job(system: str, commands: list[str], variables: dict[str, str], *, user: SystemUser,
             env: dict[str, str], project: Path, registry: RunningRegistry) -> str:
    """Run the job's commands (set-up lines skipped); returns their stderr."""
    ran, stderr = [], ""
    script = [c.replace("ghcr.io", registry.addr) for c in commands
              if not any(s in c for s in SETUP)]
    full_env = {**env, **{k: _expand(str(v), env, registry) for k, v in variables.items()}}
    for command in script if system == "github" else ["\n".join(script)]:
        # As GitHub runs a step, and GitLab's shell executor its script.
        done = subprocess.run(user.argv("bash", "--noprofile", "--norc", "-eo", "pipefail",
                                        "-c", command), env=full_env,
                              cwd=project, capture_output=True, text=True, timeout=900,
                              check=False)
        assert done.returncode == 0, f"{system}: `{command}` exited {done.returncode}:\n" \
                                     f"{done.stdout}\n{done.stderr}"
        ran.append(command)
        stderr += done.stderr
    builds = [c for c in ran if "pybuild build" in c]
    assert builds, f"{system}: no pybuild build among the commands run: {ran}"
    for flag in BUILD_FLAGS:
        assert flag in " ".join(builds[-1].split()), (flag, builds[-1])
    return stderr


def _manifest(registry: RunningRegistry, repo: str, reference: str) -> Response:
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return http(registry.addr, "GET", f"/v2/{repo}/manifests/{reference}",
                headers={"Accept": MANIFEST_ACCEPT, "Authorization": f"Basic {auth}"})


def _pushed(registry: RunningRegistry, repo: str, reference: str) -> dict[str, list[str]]:
    """Architecture -> layer digests of the index pushed as ``repo:reference``."""
    got = _manifest(registry, repo, reference)
    assert got.status == 200, (reference, got.status, got.body[:300])
    index = json.loads(got.body)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json", index
    layers = {}
    for entry in index["manifests"]:
        manifest = json.loads(_manifest(registry, repo, entry["digest"]).body)
        layers[entry["platform"]["architecture"]] = [d["digest"] for d in manifest["layers"]]
    return layers


@pytest.mark.parametrize("system", ["github", "gitlab"])
def test_readme_ci_job_builds_non_root_with_the_registry_cache(
        system: str, workspace: Path, user: SystemUser, registry: RunningRegistry) -> None:
    commands, variables = _commands(system, _jobs()[system])
    project = _project(workspace, registry.ref("ci/busybox"))
    pushed = []
    for run in (1, 2):
        env = _runner(workspace, user, f"{system}-runner-{run}")
        ci = _ci_variables(system, registry, run)
        stderr = _run_job(system, commands, variables, user=user, env={**env, **ci},
                          project=project, registry=registry)
        tag = ci.get("GITHUB_SHA") or ci["CI_COMMIT_SHORT_SHA"]
        pushed.append(_pushed(registry, REPOS[system], tag))
        if run == 2:
            assert "importing cache from type=registry" in stderr, stderr
    first, second = pushed
    assert sorted(first) == ["amd64", "arm64"]
    assert first["amd64"] != first["arm64"]
    # Same layers: every step, RUN included, came from the cache runner 1 pushed.
    assert second == first
