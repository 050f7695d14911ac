"""Shared pieces of the sandbox tests: the standard PATH, a step's record, root check, and
``--mount`` values read as a build reads them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.dockerfile.mounts import parse_mount
from builder.sandbox import SandboxMount, StepResult, sandbox_mount
from testkit.tools import require_root as root

__all__ = ["PATH", "Runner", "Step", "require_root", "run_mount"]

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_mount(text: str) -> SandboxMount:
    """The sandbox mount for one ``RUN --mount=`` value, read by the Dockerfile parser."""
    flag = parse_mount(text)
    assert flag is not None
    return sandbox_mount(flag)


def require_root() -> None:
    root("sandbox tests need root (mounts and namespaces)")


@dataclass
class Step:
    result: StepResult
    lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def stdout(self) -> list[str]:
        return [line for stream, line in self.lines if stream == "stdout"]

    @property
    def changes(self) -> Path:
        return self.result.changes


Runner = Callable[..., Step]
