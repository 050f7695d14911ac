"""Stopping ``pybuild build`` while a RUN step hangs: SIGINT (Ctrl-C), SIGTERM and SIGKILL.

Each case runs a real ``python -m builder build`` whose step starts a daemon (double fork +
``setsid``) and then waits; the test signals pybuild once both processes run. Afterwards no
process of the step may be left, whichever signal it was; after SIGINT and SIGTERM pybuild
also says so in one line, exits 128 + the signal's number and leaves no mount and no
scratch directory behind. USER root runs under bwrap, USER tester under namespaces + chroot.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
_NOT_STEPS: set[int] = {os.getpid()}


def _marked(marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` (but pybuild's own, from its
    ``--build-arg``, and this process's)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in _NOT_STEPS:
            with contextlib.suppress(OSError):
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
    return pids


def _wait_for(marker: str, count: int, timeout: float,
              proc: subprocess.Popen[bytes] | None = None) -> list[int]:
    deadline = time.monotonic() + timeout
    pids = _marked(marker)
    while len(pids) != count and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
        pids = _marked(marker)
    return pids


@pytest.mark.parametrize("user", ["root", "tester"], ids=["bwrap", "chroot"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signal_stops_the_hanging_step_and_its_daemon(
    signum: signal.Signals, user: str, context_of: Callable[[str], Path], tmp_path: Path,
) -> None:
    # The marker: only the two sleeps have it in their command lines.
    marker = nap = f"{random.randrange(1000, 9999)}.{os.getpid()}{int(signum)}"
    storage = tmp_path / "storage"
    stderr_path = tmp_path / "stderr"
    argv = [sys.executable, "-m", "builder", "build", "--progress", "plain", "--no-cache",
            "--storage", str(storage), "--build-arg", f"NAP={nap}",
            "--build-arg", f"RUN_AS={user}", str(context_of("hanging-run"))]
    env = {**os.environ, "PYBUILD_NO_FASTPATH": "1"}
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr)
    _NOT_STEPS.add(proc.pid)
    try:
        running = _wait_for(marker, 2, 60, proc)
        assert len(running) == 2, (
            f"the step did not start:\n{stderr_path.read_text(errors='replace')[-3000:]}")
        proc.send_signal(signum)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pybuild still runs 30 s after {signum.name}")
        assert _wait_for(marker, 0, 10) == [], f"the step's processes outlived {signum.name}"
        err = stderr_path.read_text(errors="replace")
        if signum is signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
            return
        assert proc.returncode == 128 + signum, err[-3000:]
        assert "Traceback" not in err
        last = err.rstrip("\n").splitlines()[-1]
        assert last == (f"ERROR: interrupted by {signum.name}: the build stopped and its "
                        "running steps were killed"), err[-3000:]
        assert proc.stdout is not None and proc.stdout.read() == b""  # no digest
        with open("/proc/self/mountinfo") as f:
            assert str(storage) not in f.read()
        assert list((storage / "builder" / "tmp").iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
        for pid in _marked(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _NOT_STEPS.discard(proc.pid)
