"""``pybuild build``'s --platform, --differ, --ssh and --allow flags (CLI checks that need
no build)."""

from __future__ import annotations

import json
import socket
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
