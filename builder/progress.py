"""Build progress: events from the executor, rendered as plain lines, JSON, or a live view.

Plain mode follows BuildKit's ``--progress=plain``::

    #3 [build 2/4] RUN make
    #3 0.214 compiling...
    #3 DONE 0.4s
    #4 [build 3/4] COPY . /src
    #4 CACHED

JSON mode writes one object per line (``{"event": "start"|"log"|"cached"|"done"|
"error"|"explain"|"result", "step": N, ...}``). On a terminal (``auto``) finished steps
scroll up as one line each (``=> [2/4] RUN make  0.4s``, ``=> CACHED [3/4] COPY ...``),
while the running steps stay at the bottom with their elapsed time and last output line,
redrawn in place.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Thread-safe: steps running in worker threads report their output lines here."""

    def __init__(self, mode: str = "plain", out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        if mode == "auto":
            mode = "tty" if self.out.isatty() else "plain"
        self.mode = mode
        self._n = 0
        self._lock = threading.Lock()
        self._start: dict[int, float] = {}
        self.cached_names: list[str] = []
        self.ran: list[str] = []
        self._names: dict[int, str] = {}
        self._active: dict[int, str] = {}
        self._drawn = 0
        # (kind, text) of each start/info/error, in order: what a fast path replays
        self.events: list[tuple[str, str]] = []

    def _emit(self, event: dict[str, object], line: str) -> None:
        with self._lock:
            if self.mode == "json":
                self.out.write(json.dumps(event) + "\n")
            elif self.mode == "quiet":
                return
            elif self.mode == "tty":
                self._tty(event)
            else:
                self.out.write(line + "\n")
            self.out.flush()

    # -- the live view (mode "tty") -------------------------------------------------------
    def _tty(self, event: dict[str, object]) -> None:
        n = int(event.get("step", 0))  # type: ignore[call-overload]
        kind = event["event"]
        name = self._names.get(n, "")
        done_line = None
        if kind == "start":
            self._active[n] = ""
        elif kind == "log":
            self._active[n] = str(event["line"])[-100:]
        elif kind in ("done", "cached", "error"):
            self._active.pop(n, None)
            secs = time.monotonic() - self._start.get(n, time.monotonic())
            done_line = {"done": f"\x1b[34m=> {name}  {secs:.1f}s\x1b[0m",
                         "cached": f"\x1b[34m=> CACHED {name}\x1b[0m",
                         "error": f"\x1b[31m=> ERROR {name}: {event.get('message')}\x1b[0m"}[
                str(kind)]
        else:
            done_line = str(event.get("reason") or event.get("message") or event.get("digest"))
        # erase the running block, print what finished, draw the block again
        self.out.write("\x1b[1A\x1b[2K" * self._drawn)
        if done_line is not None:
            self.out.write(done_line + "\n")
        lines = []
        for m, last in self._active.items():
            secs = time.monotonic() - self._start.get(m, time.monotonic())
            lines.append(f"=> {self._names.get(m, '')}  {secs:.1f}s")
            if last:
                lines.append(f"\x1b[2m   {last}\x1b[0m")
        self.out.write("".join(line + "\n" for line in lines))
        self._drawn = len(lines)

    def start(self, name: str) -> int:
        with self._lock:
            self._n += 1
            n = self._n
            self._start[n] = time.monotonic()
            self._names[n] = name
            self.events.append(("start", name))
        self._emit({"event": "start", "step": n, "name": name}, f"#{n} {name}")
        return n

    def log(self, n: int, line: str) -> None:
        elapsed = time.monotonic() - self._start.get(n, time.monotonic())
        self._emit({"event": "log", "step": n, "line": line}, f"#{n} {elapsed:.3f} {line}")

    def cached(self, n: int) -> None:
        self.cached_names.append(self._names.get(n, ""))
        self._emit({"event": "cached", "step": n}, f"#{n} CACHED")

    def done(self, n: int) -> None:
        secs = time.monotonic() - self._start.get(n, time.monotonic())
        self.ran.append(self._names.get(n, ""))
        self._emit({"event": "done", "step": n, "seconds": round(secs, 3)},
                   f"#{n} DONE {secs:.1f}s")

    def error(self, n: int, message: str) -> None:
        self.events.append(("error", message))
        self._emit({"event": "error", "step": n, "message": message}, f"#{n} ERROR: {message}")

    def explain(self, n: int, reason: str) -> None:
        self._emit({"event": "explain", "step": n, "reason": reason},
                   f"#{n} cache miss: {reason}")

    def info(self, text: str) -> None:
        self.events.append(("info", text))
        self._emit({"event": "info", "message": text}, text)

    def result(self, digest: str) -> None:
        self._emit({"event": "result", "digest": digest}, f"writing image {digest} done")
