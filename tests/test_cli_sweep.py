"""Every ``pybuild`` command, given bad input, fails with one clean line.

Each case runs ``pybuild`` as a real process: a bad flag value, an unknown reference, a
missing file, a registry nobody listens on (a closed port on 127.0.0.1), wrong
credentials, a read-only storage directory, a run interrupted by SIGINT. Each must exit
non-zero with exactly one line on stderr and no ``Traceback`` anywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest

from testkit.images import busybox_image, write_oci_layout
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    distribution_registry,
    free_port,
    pybuild_argv,
)
from testkit.rootfs import make_busybox_rootfs
from testkit.tools import require_root, require_tool
from tests.helpers.cli import ROOT, assert_one_line_error, mount_read_only, pybuild


@dataclass
class World:
    """What the cases run against."""

    tmp: Path
    storage: Path  # holds LOCAL, an image built here
    read_only: Path  # a read-only view of a store
    ctx: Path  # FROM scratch, COPY
    registry: RunningRegistry  # CNCF Distribution, holds nothing
    auth: RunningRegistry  # pybuild serve with htpasswd auth (user "sweep")
    closed: str  # 127.0.0.1:PORT where nothing listens
    silent: str  # 127.0.0.1:PORT that accepts connections and never answers
    busybox: str  # oci-layout:// base with a shell


LOCAL = "local/sweep:1"




@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    require_root("mounting and building need root")
    require_tool("docker-registry")
    require_tool("bwrap")
    tmp = tmp_path_factory.mktemp("sweep")
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "data").write_text("data\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY data /data\n")
    storage = tmp / "storage"
    built = pybuild("build", "--storage", str(storage), "--progress", "quiet", "-t", LOCAL, str(ctx))
    assert built.returncode == 0, built.stderr
    read_only = tmp / "ro"
    layout = tmp / "busybox"
    write_oci_layout(busybox_image(make_busybox_rootfs(tmp / "rootfs")), layout)
    htpasswd = tmp / "htpasswd"
    htpasswd.write_text("sweep:" + bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode() + "\n")
    auth_proc = RegistryProcess("pybuild", pybuild_argv(tmp / "auth-storage"),
                                storage=tmp / "auth-storage", log=tmp / "auth.log",
                                env={**os.environ, "PYBUILD_AUTH_HTPASSWD": str(htpasswd)})
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        mount_read_only(storage, read_only)
        with distribution_registry(tmp / "distribution") as registry, auth_proc as auth:
            yield World(tmp, storage, read_only, ctx, registry, auth,
                        f"127.0.0.1:{free_port()}", f"127.0.0.1:{silent.getsockname()[1]}",
                        f"oci-layout://{layout}:latest")
    finally:
        silent.close()
        subprocess.run(["umount", "-l", str(read_only)], check=False)


def _context(w: World, dockerfile: str, name: str) -> str:
    ctx = w.tmp / f"ctx-{name}"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    return str(ctx)


Args = Callable[[World], list[str]]

CASES: dict[str, Args] = {
    # bad flag values
    "unknown command": lambda w: ["nosuchcommand"],
    "build --progress": lambda w: ["build", "--progress", "loud", str(w.ctx)],
    "build --platform": lambda w: ["build", "--platform", "linux/amd64,linux//arm64", str(w.ctx)],
    "build --platform --load": lambda w: ["build", "--platform", "linux/amd64,linux/arm64",
                                          "-o", "type=docker,dest=x.tar", str(w.ctx)],
    "build --output": lambda w: ["build", "-o", "type=floppy,dest=x", str(w.ctx)],
    "build --build-arg": lambda w: ["build", "--build-arg", "=x", str(w.ctx)],
    "build --network": lambda w: ["build", "--network", "mesh", str(w.ctx)],
    "pull --jobs": lambda w: ["pull", "--jobs", "0", f"{w.registry.addr}/a:1"],
    "push --tls-verify": lambda w: ["push", "--tls-verify", "maybe", LOCAL],
    "storage gc --grace": lambda w: ["storage", "gc", "--grace", "soon", "--storage", str(w.storage)],
    "builder prune --older-than": lambda w: ["builder", "prune", "--older-than", "a while",
                                             "--storage", str(w.storage)],
    "serve --addr": lambda w: ["serve", "--addr", "127.0.0.1:notaport", "--storage", str(w.tmp / "s")],
    "serve --config": lambda w: ["serve", "--config", str(w.tmp / "missing.yml")],
    # unknown references
    "pull unknown image": lambda w: ["pull", f"{w.registry.addr}/nothing/here:1", "-q",
                                     "--storage", str(w.storage)],
    "pull invalid reference": lambda w: ["pull", "UPPER/Case::x", "--storage", str(w.storage)],
    "push unknown local image": lambda w: ["push", f"{w.registry.addr}/not/built:1", "-q",
                                           "--storage", str(w.storage)],
    "copy unknown local image": lambda w: ["copy", "local:not/built:1", f"oci:{w.tmp / 'out-oci'}",
                                           "--storage", str(w.storage)],
    "rmi unknown image": lambda w: ["rmi", "not/built:1", "--storage", str(w.storage)],
    "build unknown base": lambda w: ["build", "--progress", "quiet", "--storage", str(w.storage),
                                     _context(w, f"FROM {w.registry.addr}/no/base:1\n", "nobase")],
    "build unknown stage": lambda w: ["build", "--target", "nope", "--progress", "quiet",
                                      "--storage", str(w.storage), str(w.ctx)],
    # missing files
    "build missing context": lambda w: ["build", str(w.tmp / "no-context")],
    "build missing Dockerfile": lambda w: ["build", "-f", str(w.tmp / "no-Dockerfile"),
                                           "--storage", str(w.storage), str(w.ctx)],
    "build missing COPY source": lambda w: ["build", "--progress", "quiet", "--storage", str(w.storage),
                                            _context(w, "FROM scratch\nCOPY nothing /x\n", "nocopy")],
    "build missing secret": lambda w: ["build", "--secret", f"id=a,src={w.tmp / 'no-secret'}", str(w.ctx)],
    "parse missing file": lambda w: ["parse", "-f", str(w.tmp / "no-Dockerfile")],
    "copy missing layout": lambda w: ["copy", f"oci:{w.tmp / 'no-layout'}:latest",
                                      f"oci:{w.tmp / 'out2'}", "--storage", str(w.storage)],
    "login missing CA": lambda w: ["login", w.registry.addr, "-u", "a", "-p", "b",
                                   "--ca-cert", str(w.tmp / "no-ca.pem")],
    # bad files
    "parse invalid Dockerfile": lambda w: ["parse", "-f", _context(w, "FROMM x\n", "typo") + "/Dockerfile"],
    "build invalid Dockerfile": lambda w: ["build", "--storage", str(w.storage),
                                           _context(w, "FROMM x\n", "typo")],
    # read-only storage (the commands that must write; the others read it: test_read_only_storage)
    "rmi on read-only storage": lambda w: ["rmi", LOCAL, "--storage", str(w.read_only)],
    "tag on read-only storage": lambda w: ["tag", LOCAL, "local/sweep:2", "--storage", str(w.read_only)],
    "serve on read-only storage": lambda w: ["serve", "--addr", f"127.0.0.1:{free_port()}",
                                             "--storage", str(w.read_only)],
    "serve on a port in use": lambda w: ["serve", "--addr", w.registry.addr,
                                         "--storage", str(w.tmp / "serve-storage")],
}

REGISTRY_CASES: dict[str, Args] = {
    # a registry nobody listens on
    "pull closed port": lambda w: ["pull", f"{w.closed}/a:1", "-q", "--storage", str(w.storage)],
    "push closed port": lambda w: ["push", LOCAL, f"docker://{w.closed}/a:1", "-q",
                                   "--storage", str(w.storage)],
    "copy closed port": lambda w: ["copy", f"docker://{w.closed}/a:1", f"oci:{w.tmp / 'out3'}",
                                   "--storage", str(w.storage)],
    "login closed port": lambda w: ["login", w.closed, "-u", "a", "-p", "b"],
    "build closed-port base": lambda w: ["build", "--progress", "quiet", "--storage", str(w.storage),
                                         _context(w, f"FROM {w.closed}/base:1\n", "closed")],
    # wrong credentials
    "login wrong password": lambda w: ["login", w.auth.addr, "-u", "sweep", "-p", "wrong"],
    "pull without credentials": lambda w: ["pull", f"{w.auth.addr}/a:1", "-q",
                                           "--storage", str(w.storage)],
    "push without credentials": lambda w: ["push", LOCAL, f"docker://{w.auth.addr}/a:1", "-q",
                                           "--storage", str(w.storage)],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clean_line(world: World, case: str) -> None:
    assert_one_line_error(pybuild(*CASES[case](world), env={"DOCKER_CONFIG": str(world.tmp / "docker")}))


@pytest.mark.parametrize("case", sorted(REGISTRY_CASES))
def test_registry_trouble_is_one_clean_line(world: World, case: str) -> None:
    proc = pybuild(*REGISTRY_CASES[case](world), env={"DOCKER_CONFIG": str(world.tmp / "docker")},
                   timeout=60)
    assert_one_line_error(proc)


def _interrupted(args: list[str], after: float = 1.5, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``pybuild ARGS`` in a process group of its own, send the group SIGINT after
    ``after`` seconds (as a terminal's Ctrl-C does), wait at most ``timeout`` seconds."""
    env = dict(os.environ, PYBUILD_NO_FASTPATH="1", DOCKER_CONFIG="/nonexistent")
    env.pop("PYBUILD_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "builder", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(after)
        assert proc.poll() is None, f"ended before the interrupt: {proc.communicate()}"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_interrupted_pull_is_one_clean_line(world: World) -> None:
    # The registry accepts the connection and never answers: the pull waits until SIGINT,
    # then ends at once: it does not wait for the connection's timeout (30 s), as it did
    # while a thread blocked on the silent server held the process at exit.
    proc = _interrupted(["pull", f"{world.silent}/a:1", "-q", "--storage", str(world.storage)],
                        timeout=20)
    assert_one_line_error(proc)


def test_interrupted_build_is_one_clean_line(world: World) -> None:
    ctx = _context(world, f"FROM {world.busybox}\nRUN sleep 60\n", "sleep")
    proc = _interrupted(["build", "--progress", "quiet", "--storage", str(world.storage), ctx],
                        after=4, timeout=20)
    assert_one_line_error(proc)
    # Nothing of the interrupted build stays behind.
    assert list((world.storage / "builder" / "tmp").iterdir()) == []


def test_login_with_a_read_only_docker_config_is_one_clean_line(world: World) -> None:
    config = world.read_only / "docker-config"
    proc = pybuild("login", world.registry.addr, "-u", "a", "-p", "b",
                   env={"DOCKER_CONFIG": str(config)})
    assert_one_line_error(proc, str(config), "read-only file system")
