"""Command lines for podman, buildah, skopeo and umoci with private, throwaway storage.

podman and buildah share containers/storage; each test gets its own ``--root`` and
``--runroot`` (keep them short: runroot holds unix sockets) and the ``vfs`` driver, which
needs no kernel support and leaves no mounts behind. Registries under test are plain-HTTP
loopback registries, so every client is told not to require TLS.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .tools import require_tool

__all__ = ["ContainerStorage", "ToolError", "buildah", "podman", "run", "skopeo", "umoci"]


class ToolError(AssertionError):
    """An external tool exited non-zero; the message holds its command and output."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; on failure (when ``check``) raise ToolError with stdout and stderr."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if check and proc.returncode != 0:
        raise ToolError(
            f"`{' '.join(argv)}` exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@dataclass(frozen=True)
class ContainerStorage:
    """A private containers/storage location for podman and buildah."""

    root: Path
    runroot: Path

    @classmethod
    def under(cls, base: Path) -> ContainerStorage:
        """Storage in ``base/root`` and ``base/run`` (directories created)."""
        storage = cls(root=base / "root", runroot=base / "run")
        storage.root.mkdir(parents=True, exist_ok=True)
        storage.runroot.mkdir(parents=True, exist_ok=True)
        return storage

    def options(self) -> list[str]:
        return ["--root", str(self.root), "--runroot", str(self.runroot),
                "--storage-driver", "vfs"]


def podman(storage: ContainerStorage, *args: str) -> list[str]:
    """``podman`` with private storage, cgroupfs and file events (no systemd needed)."""
    return [require_tool("podman"), *storage.options(), "--cgroup-manager", "cgroupfs",
            "--events-backend", "file", *args]


def buildah(storage: ContainerStorage, *args: str) -> list[str]:
    """``buildah`` with private storage; build with ``bud --isolation chroot``."""
    return [require_tool("buildah"), *storage.options(), *args]


def skopeo(*args: str) -> list[str]:
    """``skopeo``; pass ``--src-tls-verify=false``/``--dest-tls-verify=false`` for loopback."""
    return [require_tool("skopeo"), *args]


def umoci(*args: str) -> list[str]:
    """``umoci`` (unpack/repack OCI image layouts)."""
    return [require_tool("umoci"), *args]
