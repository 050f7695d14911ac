"""The progress renderers: BuildKit-like plain lines, JSON events, the terminal view."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from builder.progress import BuildProgress


def _drive(p: BuildProgress) -> None:
    a = p.start("[1/3] FROM base")
    p.done(a)
    b = p.start("[2/3] RUN make")
    p.log(b, "compiling")
    p.done(b)
    c = p.start("[3/3] COPY . /src")
    p.cached(c)
    p.result("sha256:" + "a" * 64, "sha256:" + "b" * 64)


def test_plain_lines_look_like_buildkit() -> None:
    out = io.StringIO()
    p = BuildProgress("plain", out)
    _drive(p)
    lines = out.getvalue().splitlines()
    assert lines[0] == "#1 [1/3] FROM base"
    assert lines[1].startswith("#1 DONE ") and lines[1].endswith("s")
    assert lines[2] == "#2 [2/3] RUN make"
    assert lines[3].startswith("#2 0.") and lines[3].endswith(" compiling")
    assert lines[5:7] == ["#3 [3/3] COPY . /src", "#3 CACHED"]
    assert p.cached_names == ["[3/3] COPY . /src"]
    assert p.ran == ["[1/3] FROM base", "[2/3] RUN make"]


def test_json_events() -> None:
    out = io.StringIO()
    _drive(BuildProgress("json", out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "done", "start", "log", "done", "start",
                                            "cached", "result"]
    assert events[3] == {"event": "log", "step": 2, "line": "compiling"}
    assert events[-1] == {"event": "result", "digest": "sha256:" + "a" * 64,
                          "image_id": "sha256:" + "b" * 64}


def test_terminal_view_redraws_running_steps_in_place() -> None:
    out = io.StringIO()
    p = BuildProgress("tty", out)
    b = p.start("[2/3] RUN make")
    p.log(b, "compiling")
    text = out.getvalue()
    assert "=> [2/3] RUN make" in text and "compiling" in text
    p.done(b)
    final = out.getvalue()[len(text):]
    assert final.startswith("\x1b[1A\x1b[2K" * 2)  # the two running lines are erased
    assert "=> [2/3] RUN make  0.0s" in final


def _run_under_terminal(argv: list[str], env: dict[str, str], timeout: float) -> str:
    """Run ``argv`` with a pseudo-terminal as its stdin/stdout/stderr; its output."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec, never return into pytest
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text[-2000:]
    return text


def test_terminal_view_ticks_the_timer_of_a_running_step(busybox_ref: str,
                                                         tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN sleep 2\n")
    env = {**os.environ, "PYBUILD_NO_FASTPATH": "1", "TERM": "xterm"}
    text = _run_under_terminal(
        [sys.executable, "-m", "builder", "build", "--no-cache", "--storage",
         str(tmp_path / "storage"), str(ctx)], env, timeout=240)
    # the running line (the finished one is coloured: "\x1b[34m=> ...")
    shown = re.findall(r"(?<!\x1b\[34m)=> \[2/2\] RUN sleep 2  (\d+\.\d)s", text)
    seconds = sorted({float(s) for s in shown})
    assert len(seconds) >= 4, shown  # redrawn every 0.2 s: ~10 values over 2 s
    assert seconds[-1] >= 1.0
    assert "\x1b[34m=> [2/2] RUN sleep 2  " in text  # then the step finished


def test_transfers_in_each_mode() -> None:
    plain, js, tty = io.StringIO(), io.StringIO(), io.StringIO()
    for mode, out in (("plain", plain), ("json", js), ("tty", tty)):
        p = BuildProgress(mode, out)
        n = p.start("pulling reg/base:1", replayable=False)
        p.transfer(n, "sha256:aa", "aa", 0, 2048)
        p.transfer(n, "sha256:aa", "aa", 1024, 2048)
        if mode == "tty":
            with p._lock:
                p._redraw(None)  # what the next tick draws
        p.transfer(n, "sha256:aa", "aa", 2048, 2048, "pulled")
        p.done(n)
        # a build that pulled is not recorded for the fast path
        assert p.events == [("unreplayable", "pulling reg/base:1")]
    assert "#1 aa 2.0 KiB / 2.0 KiB pulled" in plain.getvalue().splitlines()
    events = [json.loads(x) for x in js.getvalue().splitlines()]
    ends = [e for e in events if e["event"] == "transfer" and e["status"]]
    assert ends == [{"event": "transfer", "step": 1, "id": "sha256:aa", "label": "aa",
                     "done": 2048, "total": 2048, "status": "pulled"}]
    assert "   aa  1.0 KiB / 2.0 KiB" in tty.getvalue()


def test_local_base_line_says_how_old_it_is() -> None:
    out, js = io.StringIO(), io.StringIO()
    BuildProgress("plain", out).base_image("reg/base:1", "sha256:" + "b" * 64,
                                      time.time() - 3 * 86400 - 60)
    line = out.getvalue().strip()
    assert line.startswith("using local image reg/base:1 (sha256:bbbb")
    assert "pulled 3 days ago" in line and "--pull" in line
    p = BuildProgress("json", js)
    p.base_image("reg/base:1", "sha256:" + "b" * 64, 0.0)
    event = json.loads(js.getvalue())
    assert event["event"] == "base" and event["pulled"] == "1970-01-01T00:00:00Z"
    assert p.events and p.events[0][0] == "base"


def test_a_steps_output_is_clipped_at_buildkits_log_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # As BuildKit (BUILDKIT_STEP_LOG_MAX_SIZE, 2 MiB by default): a step that prints
    # 100 MB does not put 100 MB into the build log; one line says where it was clipped.
    out = io.StringIO()
    p = BuildProgress("plain", out)
    n = p.start("RUN yes")
    for _ in range(40000):
        p.log(n, "y" * 99)
    lines = out.getvalue().splitlines()
    shown = [line for line in lines if line.endswith("y" * 99)]
    assert len(shown) == (2 << 20) // 100
    assert lines[-1] == f"#{n} [output clipped, log limit 2MiB reached]"
    other = p.start("RUN echo")
    p.log(other, "still shown")
    assert out.getvalue().splitlines()[-1].endswith(" still shown")
    monkeypatch.setenv("BUILDKIT_STEP_LOG_MAX_SIZE", "-1")
    unlimited = io.StringIO()
    p = BuildProgress("plain", unlimited)
    n = p.start("RUN yes")
    for _ in range(40000):
        p.log(n, "y" * 99)
    assert len(unlimited.getvalue().splitlines()) == 40001


def test_a_failed_build_ends_its_json_stream_with_an_error_event(tmp_path: Path) -> None:
    """As ``pull --json``: a script reading ``--progress json`` gets why and the exit status,
    also when no step failed (here: the Dockerfile cannot be read)."""
    from click.testing import CliRunner

    from builder.cli import main

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    result = CliRunner().invoke(main, ["build", "--progress", "json", "--storage",
                                       str(tmp_path / "storage"), "-f", str(ctx / "nope"),
                                       str(ctx)])
    assert result.exit_code == 1
    last = json.loads(result.stderr.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 1 and "step" not in last
    assert last["message"].startswith("cannot read the Dockerfile")
    plain = CliRunner().invoke(main, ["build", "--progress", "plain", "--storage",
                                      str(tmp_path / "storage"), "-f", str(ctx / "nope"),
                                      str(ctx)])
    assert plain.exit_code == 1 and "{" not in plain.stderr


def test_buildkit_progress_sets_what_auto_shows(tmp_path: Path) -> None:
    """As buildx: ``BUILDKIT_PROGRESS`` is the mode of ``--progress auto`` (a CI job sets
    it once); a flag given wins; a value pybuild does not take is a usage error."""
    from click.testing import CliRunner

    from builder.cli import main

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    argv = ["build", "--storage", str(tmp_path / "storage"), "-f", str(ctx / "nope"), str(ctx)]
    runner = CliRunner()
    got = runner.invoke(main, argv, env={"BUILDKIT_PROGRESS": "json"})
    assert got.exit_code == 1
    assert json.loads(got.stderr.splitlines()[-1])["event"] == "error"
    flag = runner.invoke(main, [*argv[:1], "--progress", "plain", *argv[1:]],
                         env={"BUILDKIT_PROGRESS": "json"})
    assert flag.exit_code == 1 and "{" not in flag.stderr
    bad = runner.invoke(main, argv, env={"BUILDKIT_PROGRESS": "rawjson"})
    assert bad.exit_code == 2 and "BUILDKIT_PROGRESS=rawjson" in bad.stderr
    assert runner.invoke(main, argv, env={"BUILDKIT_PROGRESS": "tty"}).exit_code == 1
