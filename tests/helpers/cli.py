"""Run ``pybuild`` as a real process and check how it fails.

A failing command must print one line that names the problem (no ``Traceback``, no
multi-line dump) and exit non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["ROOT", "assert_one_line_error", "mount_read_only", "pybuild"]

ROOT = Path(__file__).resolve().parents[2]


def pybuild(*args: str, timeout: float = 120, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m builder ARGS`` from the checkout, output captured."""
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full.get("PYTHONPATH", "")) if p)
    full["PYBUILD_NO_FASTPATH"] = "1"
    full.pop("PYBUILD_DEBUG", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          input=input if input is not None else "")


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The command failed with exactly one line on stderr (progress lines aside, which
    the callers silence) containing every needle; returns that line."""
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"exit 0:\n{out}"
    assert "Traceback" not in out, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{proc.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in: {lines[0]}"
    return lines[0]


def mount_read_only(source: Path, target: Path) -> None:
    """Bind-mount ``source`` on ``target`` (created) read-only; undo with ``umount``."""
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
    except subprocess.CalledProcessError:
        subprocess.run(["umount", "-l", str(target)], check=False)
        raise
