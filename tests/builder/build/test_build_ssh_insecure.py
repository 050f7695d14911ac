"""``RUN --mount=type=ssh`` with ``--ssh`` and ``RUN --security=insecure`` with ``--allow``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.build_cmd import build as build_command
from builder.steps.common import BuildError
from testkit.rootfs import make_busybox_rootfs
from testkit.tools import require_tool, running_ssh_agent
from tests.builder.build.conftest import TESTFILES, write_base_layout


def _with_program(rootfs: Path, program: str) -> None:
    """Copy a host program and the shared libraries it loads into ``rootfs``."""
    libs = subprocess.run(["ldd", program], check=True, capture_output=True, text=True).stdout
    paths = [program] + [w for line in libs.splitlines() for w in line.split()
                         if w.startswith("/")]
    for p in paths:
        dest = rootfs / os.path.realpath(p).lstrip("/")
        for name in {p, os.path.realpath(p)}:
            target = rootfs / name.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy2(os.path.realpath(p), target)
        assert dest.exists()


@pytest.fixture(scope="module")
def ssh_base(busybox_ref: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    ssh_add = require_tool("ssh-add")
    base = tmp_path_factory.mktemp("ssh-base")
    rootfs = make_busybox_rootfs(base / "rootfs")
    _with_program(rootfs, ssh_add)
    return write_base_layout(rootfs, base / "layout")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A running ssh-agent holding one fresh ed25519 key: (socket, key fingerprint)."""
    keygen = require_tool("ssh-keygen")
    work = tmp_path_factory.mktemp("agent")
    with running_ssh_agent("pybuild-test-agent") as sock:
        key = work / "key"
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "pybuild-test",
                        "-f", str(key)], check=True)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run([require_tool("ssh-add"), "-q", str(key)], check=True, env=env,
                       capture_output=True)
        listed = subprocess.run([require_tool("ssh-add"), "-l"], check=True, env=env,
                                capture_output=True, text=True).stdout
        assert "pybuild-test" in listed
        yield sock, listed


def _ctx(tmp_path: Path, case: str, ref: str) -> Path:
    ctx = tmp_path / case
    shutil.copytree(TESTFILES / case, ctx)
    for df in ctx.glob("Dockerfile*"):
        df.write_text(df.read_text().replace("BASE", ref))
    return ctx


def test_ssh_agent_is_forwarded(ssh_base: str, agent: tuple[Path, str], build,
                                tmp_path: Path) -> None:
    sock, listed = agent
    ctx = _ctx(tmp_path, "ssh", ssh_base)
    out = tmp_path / "out"
    build(ctx, local=out, ssh={"default": sock, "deploy": sock})
    assert (out / "default.txt").read_text() == listed
    assert (out / "deploy.txt").read_text() == listed
    assert (out / "sock.txt").read_text() == "/run/buildkit/ssh_agent.0\n"
    assert (out / "stat.txt").read_text() == "600 0 0 socket\n"
    assert (out / "deploy-stat.txt").read_text() == "660 1000 50\n"
    assert (out / "after.txt").read_text() == "gone\n"
    assert not (out / "run/buildkit").exists()


def test_ssh_without_an_agent(ssh_base: str, build, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "ssh", ssh_base)
    with pytest.raises(BuildError, match=r"Dockerfile.required:3: RUN: --mount=type=ssh,required=true: "
                                         r"no SSH agent 'default' was forwarded; "
                                         r"pass --ssh default"):
        build(ctx, dockerfile=ctx / "Dockerfile.required")
    # Not required (the default, or said): the mount is left out, as BuildKit does.
    for name, text in (("optional", "optional: /run/buildkit/ssh_agent.0\n"),
                       ("default", "default: /run/buildkit/ssh_agent.0\nabsent\n")):
        out = tmp_path / f"out-{name}"
        build(ctx, dockerfile=ctx / f"Dockerfile.{name}", local=out)
        assert (out / f"{name}.txt").read_text() == text


def test_insecure_needs_the_entitlement(busybox_ref: str, build, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, "insecure", busybox_ref)
    with pytest.raises(BuildError, match="Dockerfile:4: RUN: RUN --security=insecure: "
                                         "entitlement security.insecure is not allowed; "
                                         "grant it with --allow security.insecure"):
        build(ctx)
    out = tmp_path / "out"
    build(ctx, local=out, allow=frozenset({"security.insecure"}))
    default = int((out / "default.txt").read_text().split()[1], 16)
    insecure = int((out / "insecure.txt").read_text().split()[1], 16)
    ours = next(line for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("CapEff:"))
    assert insecure == int(ours.split()[1], 16)  # every capability the builder has
    assert default != insecure and default & (1 << 21) == 0  # no CAP_SYS_ADMIN by default


def _fingerprint(key: Path) -> str:
    out = subprocess.run([require_tool("ssh-keygen"), "-l", "-f", str(key)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[1]


def _key_agents_running(tmp: Path) -> list[str]:
    """The processes of the key agents pybuild started with its temporary directory in
    ``tmp`` (another test run's agents beside this one are not this test's)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "ssh-agent" in cmdline and f"{tmp}/pybuild-ssh-" in cmdline:
            found.append(cmdline)
    return found


def test_ssh_key_files_are_served_by_an_agent_for_the_build(
        ssh_base: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ssh ID=KEY[,KEY]``, as BuildKit takes key files: any file mode, several keys."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    keygen = require_tool("ssh-keygen")
    keys = []
    for name, kind in (("one", "ed25519"), ("two", "ecdsa")):
        key = tmp_path / name
        subprocess.run([keygen, "-q", "-t", kind, "-N", "", "-C", f"key-{name}", "-f",
                        str(key)], check=True)
        key.chmod(0o644)  # ssh-add refuses such a file by name; BuildKit does not care
        keys.append(key)
    ctx = _ctx(tmp_path, "ssh", ssh_base)
    out = tmp_path / "out"
    result = CliRunner().invoke(build_command, [
        "--ssh", f"default={keys[0]}", "--ssh", f"deploy={keys[0]},{keys[1]}",
        "--progress", "quiet", "--storage", str(tmp_path / "s"), "-o", str(out), str(ctx)])
    assert result.exit_code == 0, result.output
    listed = (out / "default.txt").read_text().splitlines()
    assert [line.split()[1] for line in listed] == [_fingerprint(keys[0])]
    deploy = (out / "deploy.txt").read_text().splitlines()
    assert sorted(line.split()[1] for line in deploy) == sorted(map(_fingerprint, keys))
    assert (out / "after.txt").read_text() == "gone\n"
    assert _key_agents_running(tmp) == []  # stopped with the build
    assert not list(tmp.glob("pybuild-ssh-*/agent.sock"))

    locked = tmp_path / "locked"
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)],
                   check=True)
    failed = CliRunner().invoke(build_command, [
        "--ssh", f"default={locked}", "--progress", "quiet", "--storage",
        str(tmp_path / "s"), str(ctx)])
    assert failed.exit_code == 1
    assert f"--ssh default={locked}: the key cannot be loaded" in failed.output
    assert "passphrase" in failed.output and "Traceback" not in failed.output
    assert _key_agents_running(tmp) == []


def test_a_killed_build_takes_its_key_agent_with_it(busybox_ref: str, tmp_path: Path) -> None:
    key = tmp_path / "key"
    subprocess.run([require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f",
                    str(key)], check=True)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\n"
                                    "RUN --mount=type=ssh touch /started && sleep 60\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "PYBUILD_STORAGE": str(tmp_path / "s"), "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "builder", "build", "--progress", "plain",
                             "--ssh", f"default={key}", str(ctx)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _key_agents_running(tmp):
            assert proc.poll() is None and time.monotonic() < deadline, "no agent started"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30  # stopped when the pipe from the build ends
    while _key_agents_running(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _key_agents_running(tmp) == []


def test_the_key_agent_stops_when_pybuild_dies_before_it_listens(tmp_path: Path) -> None:
    """pybuild killed at once after starting the agent (the shell that watches it has not
    printed its pid yet; that pipe's reader is gone): the agent still stops."""
    from builder.ssh_keys import _WATCHDOG

    tmp = tmp_path / "tmp"
    sock = tmp / "pybuild-ssh-x" / "agent.sock"
    sock.parent.mkdir(parents=True)
    watchdog = subprocess.Popen(["/bin/sh", "-c", _WATCHDOG, require_tool("ssh-agent"), str(sock)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    assert watchdog.stdin is not None and watchdog.stdout is not None
    watchdog.stdout.close()  # as a killed pybuild's ends close: the pid's reader first
    watchdog.stdin.close()
    watchdog.wait(30)
    deadline = time.monotonic() + 30
    while _key_agents_running(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _key_agents_running(tmp) == []
