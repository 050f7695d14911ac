"""Start the stage process and stream what the step prints.

``spawn`` starts ``_stage.py`` under ``unshare(1)``, hands it the plan through a pipe,
streams the command's stdout/stderr lines to a callback while keeping the last
``TAIL_LINES`` for error messages, and collects the stage's JSON report lines. An
interrupted call (KeyboardInterrupt in the callback, ...) kills the whole process
session -- which ends the step's namespaces and with them every mount -- and waits for it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from . import _stage
from .errors import SandboxUnavailable
from .spec import Network

__all__ = ["TAIL_LINES", "OutputCallback", "spawn"]

TAIL_LINES = 50
MAX_LINE = 64 * 1024
OutputCallback = Callable[[str, str], None]
"""Called with ("stdout" | "stderr", line without its newline) as the command prints."""


def spawn(
    plan: dict[str, object],
    chroot: bool,
    network: Network,
    on_output: OutputCallback | None,
    reports: list[dict[str, object]],
) -> tuple[int, list[str]]:
    """Start the stage, feed it the plan, stream its output; ``reports`` gets the stage's
    report lines (also when interrupted, so the caller can still clean up)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SandboxUnavailable("unshare not found: apt-get install util-linux")
    cmd = [unshare, "--mount", "--propagation", "private", "--fork", "--kill-child"]
    if chroot:
        cmd += ["--pid", "--ipc", "--uts"]
    if network is Network.NONE:
        cmd.append("--net")
    plan_r, plan_w = os.pipe()
    report_r, report_w = os.pipe()
    cmd += [sys.executable, "-I", _stage.__file__, str(plan_r), str(report_w)]
    proc = None
    report = bytearray()
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(plan_r, report_w),
            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
            start_new_session=True,
        )
        os.close(plan_r)
        os.close(report_w)
        plan_r = report_w = -1
        with os.fdopen(plan_w, "wb") as f, contextlib.suppress(BrokenPipeError):
            plan_w = -1
            # (A stage that died before reading its plan says why on stderr.)
            f.write(json.dumps(plan).encode())
        tail = _pump(proc, report_r, report, on_output)
        return proc.wait(), tail
    finally:
        for line in bytes(report).splitlines():
            with contextlib.suppress(ValueError):
                reports.append(json.loads(line))
        for fd in (plan_r, plan_w, report_r, report_w):
            if fd >= 0:
                os.close(fd)
        if proc is not None and proc.poll() is None:
            # Interrupted (KeyboardInterrupt, ...): the whole session goes, then we wait
            # so no namespace outlives the call.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_group_gone(proc.pid)
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the session's group is left (they die asynchronously:
    namespaced children are reaped by their own init, after we reaped ``unshare``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def _pump(
    proc: subprocess.Popen[bytes],
    report_fd: int,
    report: bytearray,
    on_output: OutputCallback | None,
) -> list[str]:
    """Stream the command's lines to ``on_output`` until every pipe closes; collect the
    stage's report into ``report``; return the last ``TAIL_LINES`` lines."""
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    partial = {"stdout": b"", "stderr": b""}
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    sel.register(report_fd, selectors.EVENT_READ, "report")

    def emit(name: str, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        tail.append(line)
        if on_output is not None:
            on_output(name, line)

    try:
        while sel.get_map():
            for key, _ in sel.select():
                fd = key.fd
                chunk = os.read(fd, 65536)
                name = key.data
                if not chunk:
                    sel.unregister(key.fileobj)
                    if name != "report" and partial[name]:
                        emit(name, partial[name])
                        partial[name] = b""
                    continue
                if name == "report":
                    report += chunk
                    continue
                *lines, partial[name] = (partial[name] + chunk).split(b"\n")
                for raw in lines:
                    emit(name, raw)
                if len(partial[name]) > MAX_LINE:  # output without newlines: cut it
                    emit(name, partial[name])
                    partial[name] = b""
    finally:
        sel.close()
    return list(tail)


