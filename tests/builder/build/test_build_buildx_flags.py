"""buildx flags CI scripts use: ``-q``, ``-f -``, ``--secret id=..,env=..`` and
``--annotation`` (real builds over the busybox base)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.build_cmd import build as build_command


def _cli(ctx: Path, tmp_path: Path, *args: str, env: dict[str, str | None] | None = None,
         stdin: str | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_command, [*args, "--storage", str(tmp_path / "s"),
                                              str(ctx)], env=env, input=stdin)


def test_quiet_prints_only_the_digest(context_of, tmp_path: Path) -> None:
    ctx = context_of("basic")
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "s"), "PYBUILD_NO_FASTPATH": "1"}
    done = subprocess.run(["python3", "-m", "builder", "build", "-q", str(ctx)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("sha256:") and done.stdout.count("\n") == 1
    failing = subprocess.run(["python3", "-m", "builder", "build", "--quiet",
                              str(context_of("failing-run"))],
                             capture_output=True, text=True, env=env, timeout=300, check=False)
    assert failing.returncode == 1 and failing.stdout == ""
    assert "exit code 3" in failing.stderr  # errors still go to stderr
    both = _cli(ctx, tmp_path, "-q", "--progress", "plain")
    assert both.exit_code == 2 and "--progress plain and --quiet" in both.output


def test_dockerfile_from_stdin(context_of, tmp_path: Path) -> None:
    ctx = context_of("buildx-flags")
    out = tmp_path / "out"
    text = (ctx / "stdin.Dockerfile").read_text()
    result = _cli(ctx, tmp_path, "-f", "-", "--progress", "quiet", "-o", str(out), stdin=text)
    assert result.exit_code == 0, result.output
    listing = (out / "listing.txt").read_text().split()
    assert "kept.txt" in listing and "Dockerfile" in listing
    assert "ignored.txt" not in listing  # the context's .dockerignore applies
    bad = _cli(ctx, tmp_path, "-f", "-", stdin="FROM scratch\nNOPE x\n")
    assert bad.exit_code == 1
    assert "Dockerfile:2" in bad.output and "Traceback" not in bad.output


def test_secret_from_an_environment_variable(context_of, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context_of("buildx-flags")
    forms = (["--secret", "id=token,env=MY_TOKEN"],
             ["--secret", "type=env,id=token,src=MY_TOKEN"], ["--secret", "id=token"])
    for i, form in enumerate(forms):
        out = tmp_path / f"out{i}"
        env: dict[str, str | None] = {"MY_TOKEN": f"from-env-{i}", "token": "bare-id"}
        # secrets are not part of the cache key (as BuildKit): run the steps again
        result = _cli(ctx, tmp_path, *form, "--no-cache", "--progress", "quiet",
                      "-o", str(out), env=env)
        assert result.exit_code == 0, result.output
        expected = "bare-id" if form[1] == "id=token" else f"from-env-{i}"
        assert (out / "token.txt").read_text() == expected
        assert (out / "token-env.txt").read_text() == expected + "\n"
    # no variable of that name: the file named by the id, as BuildKit
    monkeypatch.chdir(tmp_path)
    (tmp_path / "token").write_text("from-file")
    out = tmp_path / "out-file"
    result = _cli(ctx, tmp_path, "--secret", "id=token", "--no-cache", "--progress", "quiet",
                  "-o", str(out), env={"token": None})
    assert result.exit_code == 0, result.output
    assert (out / "token.txt").read_text() == "from-file"
    for value, message in (("id=token,env=NOT_SET_ANYWHERE", "NOT_SET_ANYWHERE is not set"),
                           ("id=token,type=vault", "type=vault: use type=file or type=env"),
                           ("id=token,bogus=1", "unexpected key 'bogus'"),
                           ("env=X", "id= is missing")):
        bad = _cli(ctx, tmp_path, "--secret", value, env={"NOT_SET_ANYWHERE": None, "X": "1"})
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert "Traceback" not in bad.output


def test_annotations_on_the_manifest_and_its_descriptor(context_of, tmp_path: Path) -> None:
    ctx = context_of("basic")
    layout = tmp_path / "layout"
    result = _cli(ctx, tmp_path, "--progress", "quiet", "-t", "example.com/app:1",
                  "-o", f"type=oci,dest={layout},tar=false",
                  "--annotation", "org.opencontainers.image.title=app",
                  "--annotation", "manifest:com.example.a=1",
                  "--annotation", "manifest,manifest-descriptor:com.example.both=2",
                  "--annotation", "manifest-descriptor:com.example.desc=3",
                  "--annotation", "manifest[linux/s390x]:com.example.other=4")
    assert result.exit_code == 0, result.output
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    assert desc["annotations"]["com.example.desc"] == "3"
    assert desc["annotations"]["com.example.both"] == "2"
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "1"
    digest = desc["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    assert manifest["annotations"] == {"org.opencontainers.image.title": "app",
                                       "com.example.a": "1", "com.example.both": "2"}
    assert result.output.strip().splitlines()[-1] == desc["digest"]
    for value, message in (("index:a=b", "index annotations not supported for single "
                                         "platform export"),
                           ("index-descriptor:a=b", "index annotations not supported"),
                           ("config:a=b", "unknown annotation type 'config'"),
                           ("novalue", "expected KEY=VALUE")):
        bad = _cli(ctx, tmp_path, "--annotation", value)
        assert bad.exit_code == 2 and message in bad.output, bad.output


def test_add_host_shm_size_and_ulimit_reach_run_steps(context_of, tmp_path: Path) -> None:
    """Both executors: root's RUN (bubblewrap) and a USER's (chroot)."""
    ctx = context_of("run-limits")
    out = tmp_path / "out"
    flags = ("--add-host", "db.internal:10.1.2.3", "--add-host", "cache.internal=fd00::7",
             "--shm-size", "8m", "--ulimit", "nofile=1024:2048", "--ulimit", "nproc=300")
    result = _cli(ctx, tmp_path, *flags, "--progress", "quiet", "-o", str(out))
    assert result.exit_code == 0, result.output
    for suffix in ("", "-nobody"):
        hosts = (out / f"out/hosts{suffix}.txt").read_text().splitlines()
        assert hosts == ["10.1.2.3\tdb.internal", "fd00::7\tcache.internal"]
        assert (out / f"out/shm{suffix}.txt").read_text().splitlines()[0] == "8192"
        assert (out / f"out/nofile{suffix}.txt").read_text().split() == ["1024", "2048"]
    assert (out / "out/shm.txt").read_text().splitlines()[1] == "1777"
    assert (out / "out/nproc-nobody.txt").read_text().split() == ["300"]
    # part of the steps' keys, as in BuildKit: another value runs them again
    again = tmp_path / "again"
    result = _cli(ctx, tmp_path, *flags[:-2], "--ulimit", "nofile=512", "--progress",
                  "quiet", "-o", str(again))
    assert result.exit_code == 0, result.output
    assert (again / "out/nofile-nobody.txt").read_text().split() == ["512", "512"]
    # without --shm-size: BuildKit's 64 MiB, under both executors
    plain = tmp_path / "plain"
    result = _cli(ctx, tmp_path, "--progress", "quiet", "-o", str(plain))
    assert result.exit_code == 0, result.output
    for suffix in ("", "-nobody"):
        assert (plain / f"out/shm{suffix}.txt").read_text().splitlines()[0] == "65536"
    # a limit the kernel refuses (more open files than fs.nr_open allows): one line
    refused = _cli(ctx, tmp_path, "--ulimit", "nofile=-1", "--no-cache", "--progress",
                   "quiet")
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "ERROR: Dockerfile:2: RUN: could not set up the sandbox for RUN: --ulimit "
        "nofile=-1:-1 cannot be set: not allowed to raise maximum limit"]
    assert "Traceback" not in refused.output
    for flag, value, message in (
            ("--add-host", "db.internal", "expected NAME:IP"),
            ("--add-host", "db:host-gateway", "host-gateway is not supported"),
            ("--shm-size", "lots", "expected a size"),
            ("--ulimit", "files=1", "expected NAME=SOFT[:HARD]"),
            ("--ulimit", "nofile=2048:1024", "soft limit must not be above"),
            ("--ulimit", "nofile=x", "whole numbers")):
        bad = _cli(ctx, tmp_path, flag, value)
        assert bad.exit_code == 2 and message in bad.output, bad.output

