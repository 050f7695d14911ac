"""Failures: a full disk, an interrupted step, impossible requests; cleanup after each."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.sandbox import (
    Executor,
    OutOfDiskSpace,
    RootfsMode,
    RunSpec,
    SandboxSetupError,
    SandboxUnavailable,
    run_step,
)
from testkit.tools import require_tool
from tests.helpers.disks import small_filesystem
from tests.helpers.sandbox_steps import PATH, Runner, require_root, run_mount


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem (tmpfs) to hold the step's state."""
    with small_filesystem(tmp_path / "disk", "4m") as disk:
        yield disk


def test_out_of_disk_space_is_named(
    base_root: Path, small_disk: Path, executor: Executor
) -> None:
    spec = RunSpec(argv=("/bin/sh", "-c", "dd if=/dev/zero of=/big bs=1024 count=16384"),
                   env=(PATH,))
    with pytest.raises(OutOfDiskSpace) as info:
        run_step(spec, lowers=[base_root], state_dir=small_disk / "state", executor=executor)
    message = str(info.value)
    assert "ran out of disk space" in message and str(small_disk / "state") in message
    assert info.value.exit_code != 0
    assert sorted(p.name for p in (small_disk / "state").iterdir()) == ["upper"]


def _sandbox_pids(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_interrupt_kills_the_step_and_cleans_up(
    base_root: Path, tmp_path: Path, executor: Executor
) -> None:
    marker = "sleep 317.25"
    spec = RunSpec(argv=("/bin/sh", "-c", f"echo started; {marker}"), env=(PATH,))

    def on_output(stream: str, line: str) -> None:
        raise KeyboardInterrupt

    state = tmp_path / "state"
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_step(spec, lowers=[base_root], state_dir=state, executor=executor,
                 on_output=on_output)
    assert time.monotonic() - t0 < 10
    assert _sandbox_pids(marker) == []
    assert sorted(p.name for p in state.iterdir()) == ["upper"]
    with open("/proc/self/mountinfo") as f:
        assert str(state) not in f.read()


def test_setup_failure_is_reported_and_cleaned(
    base_root: Path, tmp_path: Path, executor: Executor
) -> None:
    # /etc/passwd is a file: nothing can be mounted below it.
    spec = RunSpec(argv=("/bin/true",), env=(PATH,),
                   mounts=(run_mount("type=tmpfs,target=/etc/passwd/x"),))
    state = tmp_path / "state"
    with pytest.raises(SandboxSetupError, match="could not set up the sandbox"):
        run_step(spec, lowers=[base_root], state_dir=state, executor=executor)
    assert sorted(p.name for p in state.iterdir()) == ["upper"]


def test_state_dir_must_be_empty(base_root: Path, tmp_path: Path) -> None:
    require_root()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "junk").touch()
    with pytest.raises(SandboxSetupError, match="not empty"):
        run_step(RunSpec(argv=("/bin/true",)), lowers=[base_root], state_dir=tmp_path / "state")


def test_bwrap_cannot_be_forced_for_another_user(base_root: Path, tmp_path: Path) -> None:
    require_root()
    require_tool("bwrap")
    with pytest.raises(SandboxUnavailable, match="executor=chroot"):
        run_step(RunSpec(argv=("/bin/true",), user="tester"), lowers=[base_root],
                 state_dir=tmp_path / "s", executor=Executor.BWRAP)


def test_auto_picks_bwrap_for_root_when_installed(base_root: Path, tmp_path: Path) -> None:
    require_root()
    require_tool("bwrap")
    result = run_step(RunSpec(argv=("/bin/true",)), lowers=[base_root], state_dir=tmp_path / "s")
    assert result.executor is Executor.BWRAP
    assert result.rootfs_mode is RootfsMode.OVERLAY


def test_forcing_bwrap_without_bwrap_says_what_to_install(
    base_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_root()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap to be found
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_step(RunSpec(argv=("/bin/true",)), lowers=[base_root], state_dir=tmp_path / "s",
                 executor=Executor.BWRAP, rootfs=RootfsMode.COPY)


def test_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install bubblewrap"):
        require_tool("bwrap")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tool("bwrap")


def test_copy_mode_state_dir_holds_only_the_root(
    run: Runner, executor: Executor
) -> None:
    step = run("touch /made", rootfs=RootfsMode.COPY)
    assert sorted(p.name for p in step.changes.parent.iterdir()) == ["rootfs"]
    assert (step.changes / "made").exists()


@pytest.fixture
def overlay_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on overlayfs, which cannot hold another overlay's upper dir."""
    require_root()
    for d in ("l", "u", "w", "m"):
        (tmp_path / d).mkdir()
    opts = f"lowerdir={tmp_path}/l,upperdir={tmp_path}/u,workdir={tmp_path}/w"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(tmp_path / "m")],
                   check=True)
    try:
        yield tmp_path / "m"
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "m")], check=True)


def test_auto_falls_back_to_copy_where_overlay_cannot_mount(
    base_root: Path, overlay_disk: Path, executor: Executor
) -> None:
    from builder.sandbox.rootfs import overlay_supported

    assert not overlay_supported(overlay_disk)
    spec = RunSpec(argv=("/bin/sh", "-c", "rm /etc/group; echo ok > /done"), env=(PATH,))
    result = run_step(spec, lowers=[base_root], state_dir=overlay_disk / "s", executor=executor)
    assert result.rootfs_mode is RootfsMode.COPY
    assert (result.changes / "done").read_text() == "ok\n"
    assert not (result.changes / "etc/group").exists()
    with pytest.raises(SandboxUnavailable, match="rootfs=copy"):
        run_step(spec, lowers=[base_root], state_dir=overlay_disk / "t", executor=executor,
                 rootfs=RootfsMode.OVERLAY)


def _wait_for_pids(marker: str, count: int, timeout: float) -> list[int]:
    """The processes whose command line holds ``marker``, once there are ``count`` of
    them or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    pids = _sandbox_pids(marker)
    while len(pids) != count and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = _sandbox_pids(marker)
    return pids


def _kill_leftovers(marker: str) -> None:
    for pid in _sandbox_pids(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_interrupt_from_another_thread_kills_the_whole_tree(
    base_root: Path, tmp_path: Path, executor: Executor
) -> None:
    """``StepInterrupt.interrupt()`` (what a build does on Ctrl-C) kills every process of
    the step, a daemon that left the session included, and cleans up as run_step does."""
    from builder.sandbox import StepInterrupt, StepInterrupted

    # The marker: only the two sleeps have it in their command lines (not the shell).
    marker = nap = f"{random.randrange(1000, 9999)}.{os.getpid()}"
    spec = RunSpec(argv=("/bin/sh", "-c", "(setsid sleep $NAP >/dev/null 2>&1 &); "
                         "echo started; sleep $NAP"), env=(PATH, f"NAP={nap}"))
    stop = StepInterrupt()
    outcome: list[BaseException] = []
    state = tmp_path / "state"

    def step() -> None:
        try:
            run_step(spec, lowers=[base_root], state_dir=state, executor=executor,
                     interrupt=stop)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=step)
    thread.start()
    try:
        assert len(_wait_for_pids(marker, 2, 30)) == 2, "the step did not start"
        t0 = time.monotonic()
        stop.interrupt()
        thread.join(20)
        assert not thread.is_alive()
        assert time.monotonic() - t0 < 10
        assert len(outcome) == 1 and isinstance(outcome[0], StepInterrupted)
        assert "interrupted" in str(outcome[0])
        assert _wait_for_pids(marker, 0, 10) == []
        assert sorted(p.name for p in state.iterdir()) == ["upper"]
        with open("/proc/self/mountinfo") as f:
            assert str(state) not in f.read()
    finally:
        stop.interrupt()
        thread.join(30)
        _kill_leftovers(marker)


def test_an_interrupt_before_the_start_runs_nothing(
    base_root: Path, tmp_path: Path, executor: Executor
) -> None:
    from builder.sandbox import StepInterrupt, StepInterrupted

    stop = StepInterrupt()
    stop.interrupt()
    spec = RunSpec(argv=("/bin/sh", "-c", "touch /ran"), env=(PATH,))
    state = tmp_path / "state"
    with pytest.raises(StepInterrupted):
        run_step(spec, lowers=[base_root], state_dir=state, executor=executor, interrupt=stop)
    assert not (state / "upper" / "ran").exists()
    assert sorted(p.name for p in state.iterdir()) == ["upper"]
