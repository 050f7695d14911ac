"""Progress reporting for long transfers (and builds): bars, plain lines or JSON events.

One :class:`Progress` per operation; tasks are keyed by a short id (e.g. a blob digest)::

    progress.start(key, label, total)      a task begins (total bytes, or 0 if unknown)
    progress.advance(key, n, reused=False) n bytes done: transferred, or reused locally
    progress.finish(key, status)           "done", "exists", "mounted", ...
                                           ("exists"/"mounted": the destination had the
                                           blob; its bytes count as reused)
    progress.fail(key, exc)                "failed" with the error's message, or
                                           "interrupted" when it was cancelled (another
                                           task failed, or Ctrl-C)
    progress.close()                       final summary; returns it as a dict
    progress.phase(key, "fetch")           a Progress whose task ``key`` is the first phase
                                           of this one's: its bytes move the bar (JSON:
                                           ``progress`` events with ``"phase"``), not the
                                           totals; this one's ``start`` of the key goes on

Modes: ``tty`` redraws one line per task plus a totals line (at most 10 times a second,
and no taller than the terminal: finished tasks give way to running ones); ``plain``
prints a line when a task starts and ends (for CI logs); ``json``
prints one JSON object per line per event (``start``, ``progress`` at most 4 times a second
per task, ``done``, ``summary``); ``quiet`` prints nothing. Safe to call from one event
loop only (no locking).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from cas.terminal import clip, columns, live, rows
from cas.units import human_bytes

__all__ = ["Progress"]


@dataclass
class _Task:
    label: str
    total: int
    done: int = 0
    reused: int = 0
    status: str = ""
    last_emit: float = 0.0
    phase: str = ""  # a first phase running (shown, not counted): see Progress.phase


class Progress:
    def __init__(self, mode: str = "plain", stream: TextIO | None = None) -> None:
        if mode not in ("tty", "plain", "json", "quiet"):
            raise ValueError(f"progress mode {mode!r}: use tty, plain, json or quiet")
        self.mode = mode
        self.stream = stream or (sys.stdout if mode == "json" else sys.stderr)
        self.tasks: dict[str, _Task] = {}
        self.transferred = 0
        self.reused = 0
        self.started = time.monotonic()
        self._drawn = 0
        self._last_draw = 0.0

    @classmethod
    def auto(cls, *, json_events: bool = False, quiet: bool = False, stream: TextIO | None = None) -> Progress:
        """JSON if asked, bars on a terminal, plain lines otherwise."""
        if quiet:
            return cls("quiet")
        if json_events:
            return cls("json", stream)
        out = stream or sys.stderr
        return cls("tty" if live(out) else "plain", out)

    # --- events ----------------------------------------------------------------------------
    def start(self, key: str, label: str, total: int) -> None:
        task = self.tasks.get(key)
        if task is not None and task.phase:  # its first phase ends: the task goes on
            task.phase, task.done, task.reused, task.total = "", 0, 0, total
            self._draw()
            return
        self.tasks[key] = _Task(label, total)
        if self.mode == "json":
            self._emit({"event": "start", "id": key, "label": label, "total": total})
        elif self.mode == "plain":
            self._line(f"{label}: start ({human_bytes(total)})")
        self._draw()

    def advance(self, key: str, n: int, *, reused: bool = False) -> None:
        task = self.tasks.get(key)
        if task is None or n <= 0:
            return
        if reused:
            task.reused += n
            self.reused += n
        else:
            self.transferred += n
        self._moved(key, task, n)

    def _moved(self, key: str, task: _Task, n: int) -> None:
        """``n`` more bytes of ``task`` done: its bar, and (json) a throttled event."""
        task.done += n
        now = time.monotonic()
        if self.mode == "json" and now - task.last_emit >= 0.25:
            task.last_emit = now
            doc: dict[str, Any] = {"event": "progress", "id": key, "done": task.done,
                                   "total": task.total, "reused": task.reused}
            if task.phase:
                doc["phase"] = task.phase
            self._emit(doc)
        self._draw()

    def fail(self, key: str, exc: BaseException) -> None:
        """The task ended with ``exc``: ``failed`` and why, unless it was only stopped
        (cancelled because another task failed, or interrupted): a JSON reader tells the
        blob that broke the transfer from the ones that stopped with it."""
        if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
            self.finish(key, "interrupted")
        else:
            self.finish(key, "failed", " ".join(str(exc).split()) or type(exc).__name__)

    def finish(self, key: str, status: str = "done", message: str | None = None) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        task.status = status
        if status in ("exists", "mounted") and task.done < task.total:
            # nothing was sent: the whole blob was already there (or mounted from a
            # repository of the same registry)
            rest = task.total - task.done
            task.done += rest
            task.reused += rest
            self.reused += rest
        if self.mode == "json":
            doc: dict[str, Any] = {"event": "done", "id": key, "status": status, "bytes": task.done,
                                   "reused": task.reused, "total": task.total}
            if message is not None:
                doc["message"] = message
            self._emit(doc)
        elif self.mode == "plain":
            extra = f", {human_bytes(task.reused)} reused" if task.reused else ""
            why = f": {message}" if message is not None else ""
            self._line(f"{task.label}: {status} ({human_bytes(task.done - task.reused)} "
                       f"transferred{extra}){why}")
        self._draw(force=True)

    def phase(self, key: str, name: str) -> Progress:
        """A view in which task ``key`` is a first phase of this Progress's task of that key
        (a blob fetched into the local store before it is pushed): its start is the task's
        start, its bytes move the task's bar and its JSON ``progress`` events (with
        ``"phase": name``) but not the totals, its end is nothing; the next ``start`` of
        the key here resets the bar for the second phase, whose bytes count."""
        return _Phase(self, key, name)

    def message(self, text: str) -> None:
        """A free-form line (json: a ``message`` event)."""
        if self.mode == "json":
            self._emit({"event": "message", "text": text})
        elif self.mode != "quiet":
            self._clear()
            self._line(text)
            self._draw(force=True)

    def summary(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "transferred": self.transferred,
            "reused": self.reused,
            "seconds": round(elapsed, 3),
            "speed": round(self.transferred / elapsed),
            "tasks": len(self.tasks),
        }

    def close(self) -> dict[str, Any]:
        summary = self.summary()
        if self.mode == "json":
            self._emit({"event": "summary", **summary})
        elif self.mode != "quiet":
            self._clear()
            self._line(
                f"{human_bytes(summary['transferred'])} transferred, "
                f"{human_bytes(summary['reused'])} reused, in {summary['seconds']:.1f}s "
                f"({human_bytes(summary['speed'])}/s)"
            )
        return summary

    # --- output ------------------------------------------------------------------------
    def _emit(self, doc: dict[str, Any]) -> None:
        self.stream.write(json.dumps(doc) + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.mode == "tty" and self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, force: bool = False) -> None:
        if self.mode != "tty":
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._clear()
        lines = []
        width = columns(self.stream)  # a wrapped line would be a row _clear leaves behind
        shown, hidden = self._fitting(rows(self.stream) - 2)  # and the totals, the cursor's row
        for task in shown:
            frac = task.done / task.total if task.total else 1.0
            bar = "#" * int(frac * 20)
            state = task.status or f"{human_bytes(task.done)}/{human_bytes(task.total)}"
            # the label gives way first, down to a digest's 12 characters
            room = min(40, max(12, width - 1 - len(f" [{bar:<20}] {state}")))
            lines.append(f"{task.label[:room]:<{room}} [{bar:<20}] {state}")
        if hidden:
            lines.append(f"... and {hidden} more")
        elapsed = max(now - self.started, 1e-6)
        lines.append(
            f"total: {human_bytes(self.transferred)} transferred "
            f"({human_bytes(self.transferred / elapsed)}/s), {human_bytes(self.reused)} reused"
        )
        self.stream.write("".join(clip(line, width) + "\n" for line in lines))
        self.stream.flush()
        self._drawn = len(lines)

    def _fitting(self, room: int) -> tuple[list[_Task], int]:
        """The tasks a view of ``room`` lines shows, in order, and how many it leaves out
        (then one line says so): the running tasks first, then the latest to finish; so
        the view stays within the terminal's height, as BuildKit's does."""
        tasks = list(self.tasks.values())
        if len(tasks) <= room:
            return tasks, 0
        room = max(room - 1, 1)
        running = [t for t in tasks if not t.status][:room]
        ended = [t for t in tasks if t.status]
        latest = ended[len(ended) - (room - len(running)):] if room > len(running) else []
        keep = {id(t) for t in running + latest}
        return [t for t in tasks if id(t) in keep], len(tasks) - len(keep)


class _Phase(Progress):
    """See :meth:`Progress.phase`."""

    def __init__(self, parent: Progress, key: str, name: str) -> None:
        super().__init__("quiet")
        self.parent, self.key, self.name = parent, key, name

    def start(self, key: str, label: str, total: int) -> None:
        if key != self.key:
            return
        self.parent.start(key, label, total)
        self.parent.tasks[key].phase = self.name

    def advance(self, key: str, n: int, *, reused: bool = False) -> None:
        task = self.parent.tasks.get(key)
        if key == self.key and task is not None and task.phase and n > 0:
            self.parent._moved(key, task, n)  # shown, not counted in the totals

    def finish(self, key: str, status: str = "done", message: str | None = None) -> None:
        pass  # the task's end is its last phase's

    def message(self, text: str) -> None:
        self.parent.message(text)
