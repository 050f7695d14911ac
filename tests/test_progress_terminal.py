"""The live progress views (pull/push/copy, build, storage fsck/gc) on a narrow terminal:
each line they redraw in place fits in it, or the cursor moves that take it back would
leave rows of every redraw behind; ``NO_COLOR`` leaves the colours out."""

from __future__ import annotations

import fcntl
import io
import os
import re
import struct
import termios
from collections.abc import Iterator

import pytest

from builder.progress import BuildProgress
from cas.cli_progress import FsckView, GcView
from cas.maintenance import FsckProgress, GcProgress
from cas.terminal import clip
from registry.client.progress import Progress

_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Terminal(io.StringIO):
    """What a view writes, kept; its ``fileno`` is a pseudo-terminal of ``cols`` columns."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return True


@pytest.fixture
def narrow() -> Iterator[_Terminal]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 20, 0, 0))
    try:
        yield _Terminal(slave)
    finally:
        os.close(master)
        os.close(slave)


def _rows(text: str) -> list[str]:
    return [row for line in _ESCAPE.sub("", text).split("\n") for row in line.split("\r")]


def test_a_pulls_bars_fit_a_narrow_terminal(narrow: _Terminal) -> None:
    p = Progress("tty", narrow)
    p.start("sha256:" + "a" * 64, "8c03aae86106", 1036365)
    p.advance("sha256:" + "a" * 64, 1000)
    p.finish("sha256:" + "a" * 64, "pulled")
    assert "8c03aae86106" in narrow.getvalue()
    assert max(len(row) for row in _rows(narrow.getvalue())) <= 19


def test_a_pulls_bars_fit_an_80_column_terminal(narrow: _Terminal) -> None:
    fcntl.ioctl(narrow.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    p = Progress("tty", narrow)
    p.start("k", "8c03aae86106", 1036365)
    p.advance("k", 1036000)
    p._draw(force=True)
    assert "1011.7 KiB/1012.1 KiB" in narrow.getvalue()  # the label gave way, not the state
    assert max(len(row) for row in _rows(narrow.getvalue())) <= 79


def test_a_pull_of_more_layers_than_the_terminal_has_rows_stays_within_it(narrow: _Terminal) -> None:
    # 24 rows: a view of 200 layers cannot move the cursor back to its first line, so
    # every redraw scrolled the last one out (and 200 redraws of 200 lines were 1.5 MB).
    fcntl.ioctl(narrow.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    p = Progress("tty", narrow)
    keys = [f"{i:012x}" for i in range(200)]
    for key in keys:
        p.start(key, key, 2048)
    for key in keys[:150]:
        p.advance(key, 2048)
        p.finish(key, "pulled")
    p._draw(force=True)
    frame = _ESCAPE.sub("", narrow.getvalue().rpartition("\x1b[J")[2]).splitlines()
    assert len(frame) <= 23
    assert frame[-2] == "... and 179 more" and frame[-1].startswith("total:")
    assert [row.split()[0] for row in frame[:21]] == keys[150:171]  # the running ones first
    ups = [int(n) for n in re.findall(r"\x1b\[([0-9]+)F", narrow.getvalue())]
    assert ups and max(ups) <= 23
    for key in keys[150:]:
        p.finish(key, "pulled")
    p._draw(force=True)
    frame = _ESCAPE.sub("", narrow.getvalue().rpartition("\x1b[J")[2]).splitlines()
    assert [row.split()[0] for row in frame[:21]] == keys[179:]  # then the latest to end


def test_a_builds_running_steps_fit_a_narrow_terminal(narrow: _Terminal,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builder.progress.TICK", 3600.0)  # only the events draw
    p = BuildProgress("tty", narrow)
    n = p.start("[2/3] RUN apt-get update && apt-get install -y build-essential")
    p.log(n, "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]")
    p.transfer(n, "k", "sha256:8c03aae86106", 1 << 20, 4 << 20)
    running = narrow.getvalue()
    assert max(len(row) for row in _rows(running)) <= 19
    p.done(n)
    # the rows drawn are the rows erased: one per line, as none wrapped
    assert narrow.getvalue()[len(running):].startswith("\x1b[1A\x1b[2K" * 2)


def test_no_color_leaves_a_builds_colours_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("builder.progress.TICK", 3600.0)
    monkeypatch.setenv("NO_COLOR", "1")
    out = io.StringIO()
    p = BuildProgress("tty", out)
    n = p.start("[1/1] RUN make")
    p.log(n, "compiling")
    p.done(n)
    text = out.getvalue()
    assert "=> [1/1] RUN make" in text and "compiling" in text
    assert re.findall(r"\x1b\[[0-9;]*m", text) == []


def test_fsck_and_gc_status_lines_fit_a_narrow_terminal(narrow: _Terminal) -> None:
    view = FsckView("tty", narrow)
    view.update(FsckProgress(1, 4, 3 << 30, 12 << 30))
    gc = GcView("tty", narrow)
    gc.update(GcProgress("ingests", 3))
    assert "verifying" in narrow.getvalue() and "gc: aborting" in narrow.getvalue()
    assert max(len(row) for row in _rows(narrow.getvalue())) <= 19


def test_clip_counts_wide_characters_twice() -> None:
    assert clip("abcdef", 4) == "abc"
    assert clip("镜像镜像", 6) == "镜像"
    assert clip("ab", 80) == "ab"


def test_a_dumb_terminal_gets_plain_lines(narrow: _Terminal,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``TERM=dumb`` moves no cursor: every view picks its plain lines, as for a log."""
    monkeypatch.setenv("TERM", "dumb")
    assert BuildProgress("auto", narrow).mode == "plain"
    assert Progress.auto(stream=narrow).mode == "plain"
    assert FsckView.auto(stream=narrow).mode == "plain"
    assert GcView.auto(stream=narrow).mode == "plain"
    monkeypatch.setenv("TERM", "xterm")
    assert BuildProgress("auto", narrow).mode == "tty"
    assert Progress.auto(stream=narrow).mode == "tty"
