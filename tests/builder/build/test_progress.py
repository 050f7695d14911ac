"""The progress renderers: BuildKit-like plain lines, JSON events, the terminal view."""

from __future__ import annotations

import io
import json

from builder.progress import Progress


def _drive(p: Progress) -> None:
    a = p.start("[1/3] FROM base")
    p.done(a)
    b = p.start("[2/3] RUN make")
    p.log(b, "compiling")
    p.done(b)
    c = p.start("[3/3] COPY . /src")
    p.cached(c)
    p.result("sha256:" + "a" * 64)


def test_plain_lines_look_like_buildkit() -> None:
    out = io.StringIO()
    p = Progress("plain", out)
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
    _drive(Progress("json", out))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "done", "start", "log", "done", "start",
                                            "cached", "result"]
    assert events[3] == {"event": "log", "step": 2, "line": "compiling"}
    assert events[-1]["digest"] == "sha256:" + "a" * 64


def test_terminal_view_redraws_running_steps_in_place() -> None:
    out = io.StringIO()
    p = Progress("tty", out)
    b = p.start("[2/3] RUN make")
    p.log(b, "compiling")
    text = out.getvalue()
    assert "=> [2/3] RUN make" in text and "compiling" in text
    p.done(b)
    final = out.getvalue()[len(text):]
    assert final.startswith("\x1b[1A\x1b[2K" * 2)  # the two running lines are erased
    assert "=> [2/3] RUN make  0.0s" in final
