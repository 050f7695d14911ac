"""Start the stage process and stream what the step prints.

``spawn`` starts ``_stage.py`` under ``setpriv --pdeathsig KILL unshare ...``, hands it the
plan through a pipe, streams the command's stdout/stderr lines to a callback while keeping
the last ``TAIL_LINES`` for error messages, and collects the stage's JSON report lines.

How a step's processes end, whatever happens to the caller:

- every process of the step lives in a PID namespace of its own (bwrap's, or the one
  ``unshare --pid`` makes for the chroot executor); when its first process (the *namespace
  init*) dies, the kernel kills all the others, daemons that left the session included;
- :meth:`StepInterrupt.interrupt` (another thread: a build's Ctrl-C) SIGKILLs the namespace
  init through a pidfd; the bwrap monitor, ``unshare`` and ``spawn`` then end in order,
  every process reaped by its parent;
- if the caller's process dies (SIGKILL included), the kernel signals a chain of
  parent-death signals: ``setpriv --pdeathsig KILL`` on ``unshare`` (tied to the thread
  that called ``spawn``, which waits for the step, so it lives as long as the step),
  ``unshare --kill-child`` on the stage, bwrap's ``--die-with-parent`` on the command;
- an exception in the caller's thread (KeyboardInterrupt in the callback, ...) kills the
  whole process group and waits until none of it runs.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import _stage
from .errors import SandboxUnavailable
from .spec import Network

__all__ = ["TAIL_LINES", "OutputCallback", "StepInterrupt", "spawn"]

TAIL_LINES = 50
MAX_LINE = 64 * 1024
OutputCallback = Callable[[str, str], None]
"""Called with ("stdout" | "stderr", line without its newline) as the command prints."""


class StepInterrupt:
    """Stops a running step from another thread (a build's SIGINT/SIGTERM handler).

    :meth:`interrupt` kills every process of the step; ``run_step`` then cleans up and
    raises ``StepInterrupted``. Interrupting before the step starts makes it run nothing.
    Thread-safe; interrupting twice is harmless.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._interrupted = False
        self._group: int | None = None  # the step's process group, while it runs
        self._init: int | None = None  # a pidfd of its PID namespace's init, once known

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            self._kill()

    def _kill(self) -> None:
        # Killing the namespace init ends the step from the bottom up: each parent reaps
        # its child and nothing is orphaned. Before the init is known, the whole group.
        if self._init is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init, signal.SIGKILL)
        elif self._group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._group, signal.SIGKILL)

    def _started(self, group: int) -> None:
        with self._lock:
            self._group = group
            if self._interrupted:
                self._kill()

    def _found_init(self, pid: int) -> None:
        """Record the namespace init (a pid the stage or bwrap reported) if it still is a
        member of the step's process group (so it cannot be a reused pid)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        if _process_group(pid) != self._group:
            os.close(fd)
            return
        with self._lock:
            if self._init is None:
                self._init = fd
                fd = -1
            if self._interrupted:
                self._kill()
        if fd >= 0:
            os.close(fd)

    def _finished(self) -> None:
        """The step's group leader exited: nothing may be signalled any more."""
        with self._lock:
            self._group = None
            if self._init is not None:
                os.close(self._init)
                self._init = None


def _process_group(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp ...
    return int(fields[2]) if len(fields) > 2 else None


def spawn(
    plan: dict[str, object],
    chroot: bool,
    network: Network,
    on_output: OutputCallback | None,
    reports: list[dict[str, object]],
    interrupt: StepInterrupt | None = None,
) -> tuple[int, list[str]]:
    """Start the stage, feed it the plan, stream its output; ``reports`` gets the stage's
    report lines (also when interrupted, so the caller can still clean up)."""
    unshare = shutil.which("unshare")
    setpriv = shutil.which("setpriv")
    if unshare is None or setpriv is None:
        raise SandboxUnavailable("unshare or setpriv not found: apt-get install util-linux")
    interrupt = interrupt or StepInterrupt()
    # setpriv ties unshare's life to this thread (see the module docstring).
    cmd = [setpriv, "--pdeathsig", "KILL", "--", unshare, "--mount", "--propagation",
           "private", "--fork", "--kill-child"]
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
        interrupt._started(proc.pid)
        os.close(plan_r)
        os.close(report_w)
        plan_r = report_w = -1
        with os.fdopen(plan_w, "wb") as f, contextlib.suppress(BrokenPipeError):
            plan_w = -1
            # (A stage that died before reading its plan says why on stderr.)
            f.write(json.dumps(plan).encode())
        init_key = "ns-init" if chroot else "child-pid"  # bwrap's report names it so
        tail = _pump(proc, report_r, report, on_output,
                     lambda r: _note_init(interrupt, r.get(init_key)))
        # Wait without reaping, so that the group cannot be a reused pid when signalled.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        interrupt._finished()
        code = proc.wait()
        if interrupt.interrupted:
            _wait_group_gone(proc.pid)
        return code, tail
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
            interrupt._finished()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _wait_group_gone(proc.pid)
        if proc is not None:
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Kill what is left of the step's process group and wait until none of it runs any
    more (they die asynchronously; a namespace init ends only after every process of its
    namespace). Zombies count as gone: an orphan's reaper may be slow, or never reap."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not _running_members(pgid):
            return
        time.sleep(0.01)


def _running_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return found


def _pump(
    proc: subprocess.Popen[bytes],
    report_fd: int,
    report: bytearray,
    on_output: OutputCallback | None,
    on_report: Callable[[dict[str, object]], object],
) -> list[str]:
    """Stream the command's lines to ``on_output`` until every pipe closes; collect the
    stage's report into ``report`` (each complete line also goes to ``on_report`` as it
    arrives); return the last ``TAIL_LINES`` lines."""
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
                    start = report.rfind(b"\n") + 1
                    report += chunk
                    end = report.rfind(b"\n") + 1
                    for line in bytes(report[start:end]).split(b"\n")[:-1]:
                        with contextlib.suppress(ValueError):
                            parsed = json.loads(line)
                            if isinstance(parsed, dict):
                                on_report(parsed)
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


def _note_init(interrupt: StepInterrupt, pid: object) -> bool:
    """Tell ``interrupt`` the step's first process once the report names it."""
    if not isinstance(pid, int):
        return False
    interrupt._found_init(pid)
    return True
