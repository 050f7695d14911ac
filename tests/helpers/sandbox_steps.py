"""Shared pieces of the sandbox tests: the standard PATH, a step's record, root check."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.sandbox import StepResult

__all__ = ["PATH", "Runner", "Step", "require_root"]

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def require_root() -> None:
    if os.geteuid() != 0:
        message = "sandbox tests need root (mounts and namespaces)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


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
