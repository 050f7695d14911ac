"""Which pybuild commands exist yet, and how the benchmarks call them.

A benchmark runs pybuild's side only once the command it needs answers ``--help``;
until then the side is reported as not measured, with this reason.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ROOT", "has_command", "missing_reason", "pybuild_argv", "pybuild_env", "timed_run"]

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _compiled() -> None:
    """Compile the checkout's packages (into their git-ignored ``__pycache__``), once per
    benchmark run."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "cas", "registry", "builder"],
                   cwd=ROOT, capture_output=True, check=False, timeout=300)


def pybuild_env() -> dict[str, str]:
    """The environment that runs this checkout's packages.

    Their bytecode is compiled beforehand, as an installed package's is (pip compiles at
    install time): with ``PYTHONDONTWRITEBYTECODE`` set, as on CI machines, every command
    would otherwise recompile each module of the checkout it imports, about 0.3 s per
    command, which no peer (Go binaries) pays. Python reads existing bytecode even then.
    """
    _compiled()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def pybuild_argv(*args: str) -> list[str]:
    """``python3 -m builder args...``."""
    return [sys.executable, "-m", "builder", *args]


def has_command(name: str) -> bool:
    """True when ``python3 -m builder <name> --help`` succeeds."""
    try:
        proc = subprocess.run(pybuild_argv(name, "--help"), capture_output=True, timeout=60,
                              env=pybuild_env(), cwd=ROOT,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def missing_reason(name: str) -> str:
    return (f"`python3 -m builder {name}` does not exist yet in this checkout; "
            "pybuild's side runs as soon as it does")


def timed_run(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``argv`` took; RuntimeError with the end of its stderr when it failed."""
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800,
                          stdin=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed
