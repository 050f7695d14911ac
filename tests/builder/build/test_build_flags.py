"""``pybuild build``'s --platform, --differ, --ssh and --allow flags (CLI checks that need
no build)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from builder.build_cmd import build


def _invoke(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    result = CliRunner().invoke(build, [*args, "--storage", str(tmp_path / "s"),
                                        str(tmp_path)], env=env)
    assert result.exit_code == 2, result.output
    return result.output


def test_flag_values_are_checked(tmp_path: Path) -> None:
    assert "invalid platform 'linux//x'" in _invoke(tmp_path, "--platform", "linux/amd64,linux//x")
    assert "invalid platform" in _invoke(tmp_path, "--platform", "linux//x")
    assert "'btrfs' is not one of" in _invoke(tmp_path, "--differ", "btrfs")
    assert "'network.host' is not 'security.insecure'" in _invoke(tmp_path, "--allow", "network.host")
    assert "no such agent socket or key file" in _invoke(tmp_path, "--ssh",
                                                         f"default={tmp_path}/none")
    assert "is neither an SSH agent's socket nor a private key file" in _invoke(
        tmp_path, "--ssh", f"deploy={tmp_path}/Dockerfile")
    assert "SSH_AUTH_SOCK is not set" in _invoke(tmp_path, "--ssh", "default",
                                                 env={"SSH_AUTH_SOCK": ""})


def test_a_bad_tag_fails_before_the_build(tmp_path: Path) -> None:
    """As the docker CLI: ``-t`` names are checked before any step runs, not after."""
    out = _invoke(tmp_path, "--progress", "plain", "-t", "127.0.0.1:5000/x/App:1",
                  "-t", "ok:1")
    assert "Invalid value for -t: invalid image reference '127.0.0.1:5000/x/App:1'" in out
    assert "must be lowercase" in out
    assert "#1 " not in out  # nothing ran
    assert not (tmp_path / "s").exists()
    out = _invoke(tmp_path, "--progress", "plain", "-o", 'type=image,"name=x/App:1,ok:2"')
    assert "Invalid value for --output: invalid image reference 'x/App:1'" in out
    assert "#1 " not in out


def test_ssh_flag_takes_the_agent_from_the_environment(tmp_path: Path) -> None:
    sock_path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        (tmp_path / "Dockerfile").write_text("FROM scratch\n")
        result = CliRunner().invoke(build, ["--ssh", "default", "--progress", "quiet",
                                            "--storage", str(tmp_path / "s"), str(tmp_path)],
                                    env={"SSH_AUTH_SOCK": str(sock_path)})
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("sha256:")



def test_build_arg_without_value_comes_from_the_environment(context_of,
                                                             tmp_path: Path) -> None:
    """As docker build: ``--build-arg NAME`` takes $NAME; unset, the Dockerfile's default."""
    ctx = context_of("basic")  # ARG GREETING=hello; RUN echo "$GREETING from run" > ...
    for env, expected in (({"GREETING": "howdy"}, "howdy from run\n"), ({}, "hello from run\n")):
        out = tmp_path / f"out-{len(env)}"
        environ = {**env} if env else {"GREETING": None}
        result = CliRunner().invoke(build, ["--build-arg", "GREETING", "--progress", "quiet",
                                            "--storage", str(tmp_path / "s"), "-o", str(out),
                                            str(ctx)], env=environ)
        assert result.exit_code == 0, result.output
        assert (out / "app/run.txt").read_text() == expected


def test_failed_build_leaves_no_stale_iidfile(tmp_path: Path) -> None:
    """As buildx: --iidfile is removed before the build, so that a build that fails does
    not leave the previous build's image ID for a script to run."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY missing.txt /\n")
    iid = tmp_path / "iid"
    iid.write_text("sha256:" + "0" * 64)
    result = CliRunner().invoke(build, ["--iidfile", str(iid), "--progress", "quiet",
                                        "--storage", str(tmp_path / "s"), str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "missing.txt" in result.output
    assert not iid.exists()
    (tmp_path / "Dockerfile").write_text("FROM scratch\nLABEL ok=1\n")
    meta = tmp_path / "meta.json"
    result = CliRunner().invoke(build, ["--iidfile", str(iid), "--progress", "quiet",
                                        "--metadata-file", str(meta),
                                        "--storage", str(tmp_path / "s"), str(tmp_path)])
    assert result.exit_code == 0, result.output
    # the image ID, as buildx writes it: the config's digest, which `docker run` takes
    # after --load (the manifest digest printed on stdout is no image ID to docker)
    config_digest = json.loads(meta.read_text())["containerimage.config.digest"]
    assert iid.read_text() == config_digest != result.output.strip()


def test_platform_local_is_this_host() -> None:
    """As buildx: ``--platform local`` is the host's platform, not an architecture 'local'."""
    from builder.build import target_platforms
    from registry.oci import Platform

    host = Platform.host()
    assert target_platforms("local") == [host]
    assert target_platforms(f"LOCAL,{host},linux/s390x") == [host, Platform.parse("linux/s390x")]


def test_metadata_file_names_the_image_as_buildx(tmp_path: Path) -> None:
    """``image.name`` holds the names given by -t or by an image output's ``name=``, and is
    left out when the image has none, as buildx writes it."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nLABEL ok=1\n")
    os.utime(ctx / "Dockerfile", (0, 0))  # not changed while the fast path records
    meta = tmp_path / "meta.json"
    for args, name in ((["-o", "type=image,name=example.com/app:1"], "example.com/app:1"),
                       (["-t", "example.com/app:2", "-t", "example.com/app:3"],
                        "example.com/app:2,example.com/app:3"),
                       ([], None)):
        result = CliRunner().invoke(build, [*args, "--metadata-file", str(meta),
                                            "--progress", "quiet", "--storage",
                                            str(tmp_path / "s"), str(ctx)])
        assert result.exit_code == 0, result.output
        doc = json.loads(meta.read_text())
        assert doc.get("image.name") == name, (args, doc)
        assert doc["containerimage.digest"] == result.output.strip()
    # a rebuild answered by the fast path (python -m builder) writes the same
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "s2"), "PYBUILD_FASTPATH_DEBUG": "1"}
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "builder", "build", "--progress", "plain",
                              "--metadata-file", str(meta), str(ctx)], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
        assert run.returncode == 0, run.stderr
        assert "image.name" not in json.loads(meta.read_text())
    assert "fastpath: hit" in run.stderr


def test_a_failing_cache_export_is_named_once(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\nLABEL ok=1\n")
    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # bound, never listening: the connection is refused
    try:
        ref = f"127.0.0.1:{port.getsockname()[1]}/x/app:cache"
        result = CliRunner().invoke(build, ["--cache-to", f"type=registry,ref={ref}",
                                            "--progress", "quiet", "--storage",
                                            str(tmp_path / "s"), str(tmp_path)])
    finally:
        port.close()
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"ERROR: --cache-to: type=registry,ref={ref}: cannot "
                                    "export the cache: "), result.output
    assert result.output.count("--cache-to") == 1


def test_a_cache_ref_that_cannot_be_written_fails_before_the_build(tmp_path: Path) -> None:
    """--cache-to type=registry: a bad name, or a digest (a cache is written under a tag),
    is a usage error before any step runs, not a failure after the whole build."""
    digest = "sha256:" + "0" * 64
    out = _invoke(tmp_path, "--progress", "plain", "--cache-to",
                  f"type=registry,ref=127.0.0.1:5000/x/cache@{digest}")
    assert "Invalid value for --cache-to: a cache is written under a tag, not a digest" in out
    assert "#1 " not in out
    out = _invoke(tmp_path, "--progress", "plain", "--cache-to",
                  "type=registry,ref=127.0.0.1:5000/x/Cache:1")
    assert "Invalid value for --cache-to: invalid image reference" in out
    assert not (tmp_path / "s").exists()
