"""Start a registry process on a free loopback port, wait for ``/v2/``, stop it.

``RegistryProcess`` runs any registry whose command line is known once its address is
(``argv(addr)``). Two are described here:

- CNCF Distribution, Debian's ``docker-registry`` (``distribution_registry``): filesystem
  storage under a directory, deletes enabled, plain HTTP on 127.0.0.1;
- pybuild's own (``pybuild_registry``): ``python3 -m builder serve --addr ADDR --storage DIR``;
  ``pybuild_token_registry`` runs it with its built-in token server (``auth.token.issue``).

Everything listens on 127.0.0.1 only, in plain HTTP: Docker, podman (``--tls-verify=false``)
and skopeo (``--*-tls-verify=false``) accept that for loopback registries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MANIFEST_ACCEPT",
    "REGISTRY_KINDS",
    "RegistryError",
    "RegistryProcess",
    "Response",
    "RunningRegistry",
    "distribution_argv",
    "distribution_config",
    "distribution_registry",
    "free_port",
    "get_manifest",
    "http",
    "list_tags",
    "pybuild_argv",
    "pybuild_configured_registry",
    "pybuild_registry",
    "pybuild_serve_available",
    "pybuild_token_registry",
    "registry_of_kind",
    "wait_for_v2",
]

REGISTRY_KINDS = ("distribution", "pybuild")


class RegistryError(RuntimeError):
    """A registry process failed to start or to answer."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _v2_status(addr: str, timeout: float) -> int | None:
    try:
        return http(addr, "GET", "/v2/", timeout=timeout).status
    except (OSError, urllib.error.URLError):
        return None


def wait_for_v2(
    addr: str, *, timeout: float = 30, alive: Callable[[], bool] = lambda: True
) -> None:
    """Wait until ``GET http://addr/v2/`` answers 200 or 401 (auth required counts as up).

    ``alive`` is polled too, so a process that died is reported at once, not at timeout.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _v2_status(addr, timeout=2) in (200, 401):
            return
        if not alive():
            raise RegistryError(f"the registry for {addr} exited before answering /v2/")
        time.sleep(0.05)
    raise RegistryError(f"http://{addr}/v2/ did not answer within {timeout:.0f} s")


@dataclass(frozen=True)
class RunningRegistry:
    """A registry that answers at ``addr`` (``host:port``), of kind ``kind``; ``pid``:
    its server process, when this machine runs it (for ``/proc/PID/...`` figures)."""

    kind: str
    addr: str
    storage: Path
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def ref(self, repository: str, tag_or_digest: str = "latest") -> str:
        """``addr/repository:tag`` or ``addr/repository@sha256:...``."""
        sep = "@" if ":" in tag_or_digest else ":"
        return f"{self.addr}/{repository}{sep}{tag_or_digest}"


class RegistryProcess:
    """A registry process: ``start()`` it on a free port, ``stop()`` it; a context manager.

    ``argv`` maps the listen address (``127.0.0.1:PORT``) to the command line. Output goes
    to ``log``; its tail is part of every error.
    """

    def __init__(
        self,
        kind: str,
        argv: Callable[[str], Sequence[str]],
        *,
        storage: Path,
        log: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        start_timeout: float = 30,
    ) -> None:
        self.kind = kind
        self._argv = argv
        self.storage = Path(storage)
        self.log = Path(log)
        self._env = env
        self._port = port
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self.addr = ""

    def start(self) -> RunningRegistry:
        """Start the process and return once ``/v2/`` answers; raise RegistryError if not."""
        self.addr = f"127.0.0.1:{self._port or free_port()}"
        argv = list(self._argv(self.addr))
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._env, start_new_session=True,
            )
        proc = self._proc
        try:
            wait_for_v2(self.addr, timeout=self._start_timeout, alive=lambda: proc.poll() is None)
        except RegistryError as exc:
            self.stop()
            raise RegistryError(f"{exc}\ncommand: {' '.join(argv)}\nlog:\n{self.log_tail()}") from None
        return RunningRegistry(kind=self.kind, addr=self.addr, storage=self.storage, pid=proc.pid)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self, timeout: float = 10) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout``); return its exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def __enter__(self) -> RunningRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def distribution_config(storage: Path, addr: str, htpasswd: Path | None = None,
                        *, access_log: bool = False) -> str:
    """A CNCF Distribution config: filesystem storage in ``storage``, deletes on, HTTP.

    As Debian ships it (in-memory blob descriptor cache), minus access logs (unless
    ``access_log``: one line per request in the process's output); with ``htpasswd``
    (bcrypt entries) every request needs basic auth (``auth.htpasswd``).
    """
    auth = (
        "auth:\n"
        "  htpasswd:\n"
        "    realm: basic-realm\n"
        f"    path: {htpasswd}\n"
    ) if htpasswd is not None else ""
    return auth + (
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "  accesslog:\n"
        f"    disabled: {'false' if access_log else 'true'}\n"
        "storage:\n"
        "  cache:\n"
        "    blobdescriptor: inmemory\n"
        "  filesystem:\n"
        f"    rootdirectory: {storage}\n"
        "  delete:\n"
        "    enabled: true\n"
        "  maintenance:\n"
        "    uploadpurging:\n"
        "      enabled: false\n"
        "http:\n"
        f"  addr: {addr}\n"
        "  headers:\n"
        "    X-Content-Type-Options: [nosniff]\n"
    )


def distribution_argv(workdir: Path, htpasswd: Path | None = None,
                      token: dict[str, str] | None = None, *,
                      access_log: bool = False) -> Callable[[str], list[str]]:
    """``argv(addr)`` for Debian's ``docker-registry`` storing under ``workdir/storage``
    (basic auth against ``htpasswd`` when given; bearer tokens with ``token``, the keys of
    Distribution's ``auth.token``; an access log with ``access_log``)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RegistryError("docker-registry is not installed; install docker-registry")

    def argv(addr: str) -> list[str]:
        config = workdir / "config.yml"
        text = distribution_config(workdir / "storage", addr, htpasswd, access_log=access_log)
        if token is not None:
            text = "auth:\n  token:\n" + "".join(f"    {k}: {v}\n" for k, v in token.items()) + text
        config.write_text(text)
        return [binary, "serve", str(config)]

    return argv


def pybuild_argv(storage: Path, python: str = sys.executable,
                 htpasswd: Path | None = None, config: Path | None = None) -> Callable[[str], list[str]]:
    """``argv(addr)`` for ``python -m builder serve --addr ADDR --storage STORAGE``
    (``--htpasswd FILE``, ``--config FILE`` when given)."""

    def argv(addr: str) -> list[str]:
        auth = ["--htpasswd", str(htpasswd)] if htpasswd is not None else []
        extra = ["--config", str(config)] if config is not None else []
        return [python, "-m", "builder", "serve", "--addr", addr, "--storage", str(storage), *auth, *extra]

    return argv


def pybuild_serve_available(cwd: Path | None = None) -> bool:
    """True when ``python3 -m builder serve --help`` works (pybuild's registry exists)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "serve", "--help"],
            capture_output=True, timeout=60, cwd=cwd, env=_python_env(cwd),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _python_env(root: Path | None) -> dict[str, str]:
    # Run the checkout's packages, not an installed copy.
    env = dict(os.environ)
    top = str(root or Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH", "")) if p)
    return env


@contextmanager
def distribution_registry(workdir: Path, htpasswd: Path | None = None,
                          token: dict[str, str] | None = None) -> Iterator[RunningRegistry]:
    """Run CNCF Distribution with its storage under ``workdir`` (basic auth against
    ``htpasswd``, or bearer tokens with ``token``'s ``auth.token`` keys, when given);
    yield it; stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = RegistryProcess(
        "distribution", distribution_argv(workdir, htpasswd, token),
        storage=workdir / "storage", log=workdir / "registry.log",
    )
    with process as running:
        yield running


@contextmanager
def pybuild_registry(workdir: Path, htpasswd: Path | None = None,
                     config: Path | None = None) -> Iterator[RunningRegistry]:
    """Run ``python3 -m builder serve`` with ``--storage workdir/storage`` (and
    ``--htpasswd``, ``--config`` when given); yield it; stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    process = RegistryProcess(
        "pybuild", pybuild_argv(storage, htpasswd=htpasswd, config=config),
        storage=storage, log=workdir / "registry.log", env=_python_env(None),
    )
    with process as running:
        yield running


@contextmanager
def pybuild_token_registry(
    workdir: Path, htpasswd: Path, policy: Path | None = None
) -> Iterator[RunningRegistry]:
    """Run ``python3 -m builder serve`` with bearer-token auth from its own token server:
    ``htpasswd`` users log in at ``/token``, ``policy`` (when given) says what they and
    anonymous callers may do; the signing key is made in ``workdir``."""
    issue = {"key": str(workdir / "token-key.pem"), **({"policy": str(policy)} if policy else {})}
    with pybuild_configured_registry(
        workdir, {"auth": {"htpasswd": str(htpasswd), "token": {"issue": issue}}}
    ) as running:
        yield running


@contextmanager
def pybuild_configured_registry(workdir: Path, settings: dict[str, object],
                                storage: Path | None = None) -> Iterator[RunningRegistry]:
    """Run ``python3 -m builder serve --config FILE`` with ``settings`` (the config file's
    document) and ``--storage`` ``storage`` (default ``workdir/storage``; replicas pass
    one directory)."""
    workdir.mkdir(parents=True, exist_ok=True)
    storage = storage or workdir / "storage"
    config = workdir / "registry.yaml"
    config.write_text(json.dumps(settings))  # JSON is YAML

    def argv(addr: str) -> list[str]:
        return [sys.executable, "-m", "builder", "serve", "--addr", addr, "--storage", str(storage),
                "--config", str(config)]

    process = RegistryProcess(
        "pybuild", argv, storage=storage, log=workdir / "registry.log", env=_python_env(None),
    )
    with process as running:
        yield running


def registry_of_kind(kind: str, workdir: Path,
                     htpasswd: Path | None = None) -> AbstractContextManager[RunningRegistry]:
    """The context manager that runs a registry of ``kind`` (one of ``REGISTRY_KINDS``),
    requiring basic auth against ``htpasswd`` when given."""
    if kind == "distribution":
        return distribution_registry(workdir, htpasswd)
    if kind == "pybuild":
        return pybuild_registry(workdir, htpasswd)
    raise ValueError(f"unknown registry kind {kind!r}; expected one of {REGISTRY_KINDS}")


MANIFEST_ACCEPT = (
    "application/vnd.oci.image.manifest.v1+json, "
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)


@dataclass(frozen=True)
class Response:
    """An HTTP response read completely: status, headers (lower-case names) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


def http(addr: str, method: str, path: str, *, headers: dict[str, str] | None = None,
         body: bytes | None = None, timeout: float = 30) -> Response:
    """One plain-HTTP request to ``addr``; error statuses are returned, not raised."""
    request = urllib.request.Request(
        f"http://{addr}{path}", method=method, headers=headers or {}, data=body
    )
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        resp = exc
    with resp:
        return Response(
            status=int(resp.status),
            headers={k.lower(): v for k, v in resp.headers.items()},
            body=resp.read(),
        )


def get_manifest(addr: str, repository: str, reference: str) -> Response:
    """``GET /v2/<repository>/manifests/<reference>`` accepting every manifest type."""
    return http(addr, "GET", f"/v2/{repository}/manifests/{reference}",
                headers={"Accept": MANIFEST_ACCEPT})


def list_tags(addr: str, repository: str) -> list[str]:
    """``GET /v2/<repository>/tags/list``: the repository's tags (AssertionError if not 200)."""
    resp = http(addr, "GET", f"/v2/{repository}/tags/list")
    assert resp.status == 200, f"tags/list answered {resp.status}: {resp.body[:500]!r}"
    return list(json.loads(resp.body).get("tags") or [])
