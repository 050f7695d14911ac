"""Find the external tools the end-to-end tests and the benchmarks drive.

A missing tool calls :data:`on_missing` with a message that says what to install. By
default that raises :class:`ToolMissing`; the test suite replaces it (``tests/conftest.py``)
so that a missing tool skips the test on a developer's machine but fails it when the
``CI`` environment variable is set: CI must run every end-to-end test, and a tool that
silently went missing would turn the suite into a list of skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

__all__ = [
    "DEBIAN_PACKAGE",
    "ToolMissing",
    "find_tool",
    "in_ci",
    "missing",
    "on_missing",
    "require_root",
    "require_tool",
    "running_ssh_agent",
]


class ToolMissing(RuntimeError):
    """A tool the caller needs is not installed; the message says what to install."""


def _raise(message: str) -> NoReturn:
    raise ToolMissing(message)


# What a missing tool does: raise ToolMissing (the default), or skip/fail a test.
on_missing: Callable[[str], NoReturn] = _raise


def missing(message: str) -> NoReturn:
    """Report a missing tool through :data:`on_missing` (looked up at call time)."""
    on_missing(message)

# Which Debian package provides each tool, so a failure can say what to install.
DEBIAN_PACKAGE: dict[str, str] = {
    "curl": "curl",
    "debootstrap": "debootstrap",
    "docker": "docker.io",
    "dockerd": "docker.io",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "skopeo": "skopeo",
    "podman": "podman",
    "buildah": "buildah",
    "umoci": "umoci",
    "docker-registry": "docker-registry",
    "busybox": "busybox-static",
    "wrk": "wrk",
    "bwrap": "bubblewrap",
    "newuidmap": "uidmap",
    "newgidmap": "uidmap",
    "setpriv": "util-linux",
    "useradd": "passwd",
    "usermod": "passwd",
    "userdel": "passwd",
    "ssh-agent": "openssh-client",
    "ssh-add": "openssh-client",
    "ssh-keygen": "openssh-client",
}


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set to anything but empty/0/false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_tool(name: str) -> str | None:
    """The absolute path of ``name`` on ``PATH`` (or an absolute path that exists), else None."""
    if os.path.isabs(name):
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name)


def require_tool(name: str) -> str:
    """Return the path of tool ``name``; :func:`missing` when it is not installed.

    ``name`` may be a command name looked up on ``PATH`` or an absolute path.
    """
    path = find_tool(name)
    if path is not None:
        return path
    package = DEBIAN_PACKAGE.get(os.path.basename(name), "the package that provides it")
    message = (
        f"{name} is not installed; install {package} "
        f"(`bash tests/run` installs every package the tests need)"
    )
    missing(message)


@contextlib.contextmanager
def running_ssh_agent(name: str) -> Iterator[Path]:
    """An ssh-agent listening on ``/tmp/<name>-<pid>.sock`` (short: socket paths are
    limited to 108 bytes); stopped and its socket removed afterwards."""
    sock = Path("/tmp") / f"{name}-{os.getpid()}.sock"
    proc = subprocess.Popen([require_tool("ssh-agent"), "-D", "-a", str(sock)],
                            stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert sock.exists(), "ssh-agent did not start"
        yield sock
    finally:
        proc.terminate()
        proc.wait(10)
        sock.unlink(missing_ok=True)


def require_root(why: str) -> None:
    """Go on only as root: :func:`missing` otherwise (``why`` says what needs root)."""
    if os.geteuid() != 0:
        missing(f"{why}: run the tests as root")
