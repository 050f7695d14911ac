"""Build progress: events from the executor, rendered as plain lines, JSON, or a live view.

Plain mode follows BuildKit's ``--progress=plain``::

    #3 [build 2/4] RUN make
    #3 0.214 compiling...
    #3 DONE 0.4s
    #4 [build 3/4] COPY . /src
    #4 CACHED

JSON mode writes one object per line (``{"event": "start"|"log"|"cached"|"done"|
"error"|"explain"|"result", "step": N, ...}``). On a terminal (``auto``) the plain lines
are written with the step's status updated in place.
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

    def _emit(self, event: dict[str, object], line: str) -> None:
        with self._lock:
            if self.mode == "json":
                self.out.write(json.dumps(event) + "\n")
            elif self.mode == "quiet":
                return
            else:
                self.out.write(line + "\n")
            self.out.flush()

    def start(self, name: str) -> int:
        with self._lock:
            self._n += 1
            n = self._n
            self._start[n] = time.monotonic()
            self._names[n] = name
        prefix = "\x1b[1m" if self.mode == "tty" else ""
        suffix = "\x1b[0m" if self.mode == "tty" else ""
        self._emit({"event": "start", "step": n, "name": name}, f"{prefix}#{n} {name}{suffix}")
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
        self._emit({"event": "error", "step": n, "message": message}, f"#{n} ERROR: {message}")

    def explain(self, n: int, reason: str) -> None:
        self._emit({"event": "explain", "step": n, "reason": reason},
                   f"#{n} cache miss: {reason}")

    def info(self, text: str) -> None:
        self._emit({"event": "info", "message": text}, text)

    def result(self, digest: str) -> None:
        self._emit({"event": "result", "digest": digest}, f"writing image {digest} done")
