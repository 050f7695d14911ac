"""``pybuild tag``, ``inspect`` and ``history`` on an image pybuild built, against
``docker history`` and ``docker image inspect`` of the same image ``docker load``ed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from testkit.docker_engine import DockerEngine
from testkit.tools import in_ci, require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CASE = Path(__file__).resolve().parent / "testfiles" / "image-cmds"


def _pybuild(storage: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "builder", *args, "--storage", str(storage)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def built(docker_engine: DockerEngine, busybox_layout: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The case built by pybuild (tagged in its store) and loaded into Docker."""
    if os.geteuid() != 0:
        (pytest.fail if in_ci() else pytest.skip)("pybuild build needs root")
    require_tool("bwrap")
    tag = f"pybuild-e2e/image-cmds:{uuid.uuid4().hex[:10]}"
    context = tmp_path / "context"
    shutil.copytree(CASE, context)
    archive = tmp_path / "image.tar"
    storage = tmp_path / "storage"
    _pybuild(storage, "build", "--progress", "quiet", "-t", tag, "--build-arg",
             f"BASE=oci-layout://{busybox_layout}:latest",
             "-o", f"type=docker,dest={archive}", str(context))
    docker_engine.run("load", "-i", str(archive))
    try:
        yield storage, tag
    finally:
        docker_engine.run("rmi", "--force", tag, check=False)


def test_history_matches_docker_history(built, docker_engine: DockerEngine) -> None:  # type: ignore[no-untyped-def]
    storage, tag = built
    for fmt in ("{{.ID}}|{{.CreatedBy}}|{{.Comment}}|{{.CreatedAt}}",):
        for extra in ((), ("--no-trunc",), ("--human=false",)):
            ours = _pybuild(storage, "history", *extra, "--format", fmt, tag).stdout
            theirs = docker_engine.run("history", *extra, "--format", fmt, tag).stdout
            assert ours == theirs
    # docker's table, column for column (SIZE aside: docker shows the unpacked size)
    # (CreatedSince only where it is a fixed time: "3 seconds ago" moves on)
    columns = r"table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Comment}}"
    for extra, fmt in (((), columns), (("--no-trunc",), columns),
                       (("--human=false",), columns),
                       (("--human=false",), r"table {{.CreatedSince}}\t{{.ID}}")):
        ours = _pybuild(storage, "history", *extra, "--format", fmt, tag).stdout
        assert ours == docker_engine.run("history", *extra, "--format", fmt, tag).stdout
    table = _pybuild(storage, "history", tag).stdout.splitlines()
    assert table[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert len(table) == len(docker_engine.run("history", tag).stdout.splitlines())
    assert "…" in "".join(table)  # the long RUN line, shortened as docker does
    rows = [json.loads(line) for line in
            _pybuild(storage, "history", "--format", "json", tag).stdout.splitlines()]
    assert rows[0]["CreatedBy"] == 'CMD ["cat" "/app/run.txt"]'  # Go's %q list, as BuildKit
    assert {r["ID"] for r in rows[1:]} == {"<missing>"}
    quiet = _pybuild(storage, "history", "-q", tag).stdout.split()
    assert quiet == docker_engine.run("history", "-q", tag).stdout.split()


def test_inspect_matches_docker_inspect(built, docker_engine: DockerEngine) -> None:  # type: ignore[no-untyped-def]
    storage, tag = built
    doc = json.loads(_pybuild(storage, "inspect", tag).stdout)
    theirs = json.loads(docker_engine.run("image", "inspect", tag).stdout)[0]
    assert len(doc) == 1
    image = doc[0]
    assert image["Name"].endswith(tag)
    assert theirs["Id"] == image["Manifest"]["config"]["digest"]
    assert theirs["RootFS"]["Layers"] == image["Config"]["rootfs"]["diff_ids"]
    assert theirs["Config"]["Env"] == image["Config"]["config"]["Env"]
    assert theirs["Config"]["Labels"] == image["Config"]["config"]["Labels"]
    assert len(image["Config"]["history"]) == len(
        docker_engine.run("history", "-q", tag).stdout.split())
    assert _pybuild(storage, "inspect", "--format", "{{.Digest}}", tag).stdout.strip() \
        == image["Digest"]
    assert _pybuild(storage, "inspect", "--format", "{{json .Config.config.Cmd}}",
                    tag).stdout.strip() == '["cat","/app/run.txt"]'
    # Docker's names and Docker's way of printing them, field for field
    for fmt in ("{{.Config.Cmd}}", "{{json .Config.Cmd}}", "{{.Config.Env}}",
                "{{.Config.Entrypoint}}|{{json .Config.Entrypoint}}", "{{.Config.Labels}}",
                "{{json .Config.Labels}}", "{{.Config.WorkingDir}}|{{.Config.User}}",
                "{{.Config.ExposedPorts}}", "{{json .Config.ExposedPorts}}", "{{.Config.Volumes}}",
                "{{.Config.StopSignal}}|{{.Config.OnBuild}}|{{.Config.Shell}}",
                "{{.Id}} {{.Os}}/{{.Architecture}} {{.RootFS.Type}} {{.Author}}",
                "{{json .RootFS.Layers}}", "{{.RootFS.Layers}}", "{{.RepoTags}}", "{{.Created}}"):
        ours = _pybuild(storage, "inspect", "--format", fmt, tag).stdout
        assert ours == docker_engine.run("image", "inspect", "--format", fmt, tag).stdout, fmt
    bad = _pybuild(storage, "inspect", "--format", "{{.Nope}}", tag, check=False)
    assert bad.returncode == 2 and "no field 'Nope'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_tag_names_the_same_image(built) -> None:  # type: ignore[no-untyped-def]
    storage, tag = built
    other = tag.replace(":", "-copy:")
    _pybuild(storage, "tag", tag, other)
    digests = {json.loads(_pybuild(storage, "inspect", ref).stdout)[0]["Digest"]
               for ref in (tag, other)}
    assert len(digests) == 1
    listed = json.loads(_pybuild(storage, "images", "--json").stdout)
    assert {i["digest"] for i in listed if i["ref"].endswith((tag, other))} == digests
    for args in (("tag", "pybuild-e2e/none:1", "x:1"), ("inspect", "pybuild-e2e/none:1"),
                 ("history", "pybuild-e2e/none:1")):
        missing = _pybuild(storage, *args, check=False)
        assert missing.returncode == 1, missing.stderr
        assert missing.stderr.strip().splitlines() == [
            "Error: no local image pybuild-e2e/none:1 (see pybuild images; "
            "pybuild pull pybuild-e2e/none:1)"]


def test_images_lists_as_docker_images(built, docker_engine: DockerEngine) -> None:  # type: ignore[no-untyped-def]
    """``pybuild images`` with docker images' arguments: a repository pattern, ``-q``,
    ``--format`` over its fields. IDs aside (Docker's classic store says the config's
    digest, pybuild the manifest's, as Docker's containerd store does), the same lines."""
    storage, tag = built
    repository = tag.split(":")[0]
    other = f"{repository}:second"
    _pybuild(storage, "tag", tag, other)
    docker_engine.run("tag", tag, other)
    try:
        # (the engine holds other pybuild-e2e/ images: patterns that only ours match)
        for pattern in (repository, tag, other, f"{repository.split('/')[0]}/image-cmd*",
                        f"{repository}:nope", "pybuild-e2e/*:second"):
            for fmt in ("{{.Repository}}|{{.Tag}}", "table {{.Repository}}\t{{.Tag}}", "{{.Tag}}"):
                ours = _pybuild(storage, "images", "--format", fmt, pattern).stdout.splitlines()
                theirs = docker_engine.run("images", "--format", fmt, pattern).stdout.splitlines()
                if fmt.startswith("table"):  # the header first, the rows in any order
                    assert ours[:1] == theirs[:1], (pattern, fmt)
                assert sorted(ours) == sorted(theirs), (pattern, fmt)
            ours_q = _pybuild(storage, "images", "-q", pattern).stdout.split()
            theirs_q = docker_engine.run("images", "-q", pattern).stdout.split()
            assert len(ours_q) == len(theirs_q), (pattern, ours_q, theirs_q)
        rows = [json.loads(line) for line in
                _pybuild(storage, "images", "--format", "json", repository).stdout.splitlines()]
        digest = json.loads(_pybuild(storage, "inspect", tag).stdout)[0]["Digest"]
        assert [(r["Tag"], r["Digest"], r["ID"]) for r in rows] == \
            [(t, digest, digest.split(":")[1][:12]) for t in sorted([tag.split(":")[1], "second"])]
        assert _pybuild(storage, "images", "-q", "--no-trunc", repository).stdout.split() == \
            [digest, digest]
        bad = _pybuild(storage, "images", "--format", "{{.Nope}}", check=False)
        assert bad.returncode == 2 and "no field 'Nope'" in bad.stderr
    finally:
        docker_engine.run("rmi", other, check=False)
