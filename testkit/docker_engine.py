"""A real Docker engine for end-to-end tests: the running one, or a private ``dockerd``.

If ``DOCKER_HOST`` (or ``/var/run/docker.sock``) already answers ``docker version``, that
engine is used and left running. Otherwise ``start_dockerd`` starts one in a temporary
directory with no network set-up (``--bridge=none``, no iptables) and the ``vfs`` storage
driver (which works on any filesystem, in any container, but copies every layer: keep
test images tiny). Containers run with ``--network none``.

Two clients: the ``docker`` first on ``PATH`` may be newer than the Debian daemon; it
negotiates the API version down and is used for push/pull/run/load. ``docker build``
needs BuildKit, which the Debian daemon has built in but a newer client only reaches
through the separate buildx plugin, so builds use Debian's own ``/usr/bin/docker`` with
``DOCKER_BUILDKIT=1``.

Registries on 127.0.0.0/8 may speak plain HTTP: the daemon treats loopback as an
insecure registry by default.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEBIAN_DOCKER",
    "DockerEngine",
    "DockerEngineError",
    "docker_client",
    "docker_engine",
    "find_running_engine",
    "remove_tree",
    "start_dockerd",
    "stop_dockerd",
]

DEBIAN_DOCKER = "/usr/bin/docker"
DEFAULT_SOCKET = "/var/run/docker.sock"


class DockerEngineError(RuntimeError):
    """The Docker engine could not be found, started or driven."""


def docker_client(purpose: Literal["run", "build"] = "run") -> str:
    """The ``docker`` binary to use for ``purpose``.

    ``run`` (push, pull, run, load, tag, rmi): the first ``docker`` on ``PATH``.
    ``build``: Debian's ``/usr/bin/docker`` when present (classic client, BuildKit through
    ``DOCKER_BUILDKIT=1``), else the first on ``PATH``.
    """
    if purpose == "build" and os.access(DEBIAN_DOCKER, os.X_OK):
        return DEBIAN_DOCKER
    found = shutil.which("docker")
    if found is None:
        if os.access(DEBIAN_DOCKER, os.X_OK):
            return DEBIAN_DOCKER
        raise DockerEngineError("no docker client on PATH; install docker.io")
    return found


@dataclass(frozen=True)
class DockerEngine:
    """A Docker engine that answers at ``host`` (a ``unix://`` or ``tcp://`` URL).

    ``owned`` is True when these helpers started the daemon (and will stop it).
    """

    host: str
    owned: bool
    data_root: Path | None = None
    log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        build: bool = False,
        check: bool = True,
        timeout: float = 300,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker args...`` against this engine; raise with its output when it fails.

        ``build=True`` uses the BuildKit-capable client (see ``docker_client``).
        """
        argv = [docker_client("build" if build else "run"), *args]
        env = dict(self.env)
        if build:
            env["DOCKER_BUILDKIT"] = "1"
        proc = subprocess.run(
            argv,
            env=env,
            input=input.decode() if input is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise DockerEngineError(
                f"`{' '.join(argv)}` exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc


    def run_container(self, image: str, *command: str, timeout: float = 300) -> str:
        """``docker run --rm --network none image command...``; return its stdout.

        Tests never give containers a network: registries are reached by the engine,
        not from inside containers.
        """
        return self.run("run", "--rm", "--network", "none", image, *command,
                        timeout=timeout).stdout


def _engine_env(host: str) -> dict[str, str]:
    env = dict(os.environ)
    env["DOCKER_HOST"] = host
    return env


def _answers(host: str, timeout: float = 10) -> bool:
    try:
        proc = subprocess.run(
            [docker_client("run"), "version", "--format", "{{.Server.Version}}"],
            env=_engine_env(host),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired, DockerEngineError):
        return False
    return proc.returncode == 0


def find_running_engine() -> DockerEngine | None:
    """The engine at ``$DOCKER_HOST`` or ``/var/run/docker.sock`` if it answers, else None."""
    candidates = []
    if os.environ.get("DOCKER_HOST"):
        candidates.append(os.environ["DOCKER_HOST"])
    if os.path.exists(DEFAULT_SOCKET):
        candidates.append(f"unix://{DEFAULT_SOCKET}")
    for host in candidates:
        if _answers(host):
            return DockerEngine(host=host, owned=False, env=_engine_env(host))
    return None


def start_dockerd(
    workdir: Path, *, timeout: float = 60, extra_args: Sequence[str] = ()
) -> tuple[DockerEngine, subprocess.Popen[bytes]]:
    """Start a private ``dockerd`` whose state lives under ``workdir``; wait until it answers.

    ``extra_args`` go on its command line (e.g. ``--registry-mirror=http://127.0.0.1:PORT``);
    stop the daemon with :func:`stop_dockerd`.

    ``workdir`` must be a short path: the daemon's and containerd's unix sockets live
    under it, and a unix socket path is limited to 108 bytes.
    """
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise DockerEngineError("dockerd is not installed; install docker.io")
    sock = workdir / "d.sock"
    if len(str(workdir / "x" / "containerd" / "containerd.sock.ttrpc")) > 100:
        raise DockerEngineError(
            f"{workdir} is too long for unix socket paths (108 bytes); use a shorter directory"
        )
    log = workdir / "dockerd.log"
    host = f"unix://{sock}"
    argv = [
        dockerd,
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--storage-driver=vfs",
        "--data-root", str(workdir / "data"),
        "--exec-root", str(workdir / "x"),
        "--pidfile", str(workdir / "d.pid"),
        "-H", host,
        *extra_args,
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    engine = DockerEngine(host=host, owned=True, data_root=workdir / "data", log=log,
                          env=_engine_env(host))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DockerEngineError(
                f"dockerd exited {proc.returncode} while starting; its log:\n{_tail(log)}"
            )
        if sock.exists() and _answers(host, timeout=5):
            return engine, proc
        time.sleep(0.2)
    _stop(proc)
    raise DockerEngineError(f"dockerd did not answer within {timeout:.0f} s; its log:\n{_tail(log)}")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def stop_dockerd(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    """Stop a daemon :func:`start_dockerd` started and remove its directory."""
    _stop(proc)
    remove_tree(workdir)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively, unmounting anything still mounted below it first."""
    # A daemon that died hard can leave mounts (container shm, netns) under its roots;
    # unmount them, deepest first, before deleting the files.
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        mounts = []
    prefix = str(path) + "/"
    targets = sorted(
        (m.split()[1] for m in mounts if len(m.split()) > 1 and m.split()[1].startswith(prefix)),
        key=len,
        reverse=True,
    )
    for target in targets:
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def docker_engine(base: Path | None = None) -> Iterator[DockerEngine]:
    """Yield a running engine: the host's own if it answers, else a private ``dockerd``.

    A private daemon is stopped, and its directory removed, on exit. ``base`` is the
    directory to create the private daemon's (short) directory in; default ``/tmp``.
    """
    running = find_running_engine()
    if running is not None:
        yield running
        return
    workdir = Path(tempfile.mkdtemp(prefix="pbd", dir=base or "/tmp"))
    proc = None
    try:
        engine, proc = start_dockerd(workdir)
        yield engine
    finally:
        if proc is not None:
            _stop(proc)
        remove_tree(workdir)
