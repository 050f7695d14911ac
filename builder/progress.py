"""Build progress: events from the executor, rendered as plain lines, JSON, or a live view.

Plain mode follows BuildKit's ``--progress=plain``::

    #3 [build 2/4] RUN make
    #3 0.214 compiling...
    #3 DONE 0.4s
    #4 [build 3/4] COPY . /src
    #4 CACHED
    #5 pulling localhost:5000/base:1
    #5 sha256:4f1a6c2e9b3d 2.1 MiB / 2.1 MiB pulled
    #5 DONE 0.3s

JSON mode writes one object per line (``{"event": "start"|"log"|"cached"|"done"|
"error"|"explain"|"info"|"base"|"transfer"|"result", "step": N, ...}``; a failed build
ends with an ``error`` event without ``step`` that has the ``exit_code``; ``transfer``:
``id``, ``label``, ``done``, ``total`` bytes and ``status`` of one blob of a pull or
push, at most 4 a second per blob and always at its end; ``base``: ``ref``, ``digest``,
``pulled`` (RFC 3339) and ``age_seconds`` of a local base image used without
``--pull``). On a terminal (``auto``) finished steps scroll up as one line each
(``=> [2/4] RUN make  0.4s``, ``=> CACHED [3/4] COPY ...``), while the running steps stay
at the bottom with their elapsed time, their last output line and the bytes of each
blob they move, redrawn in place every 0.2 s while a step runs.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import TextIO

from cas.terminal import clip, color, columns, live
from cas.units import human_bytes

__all__ = ["BuildProgress", "age", "mode_from_env"]

TICK = 0.2  # seconds between two redraws of the live view while steps run
_LOG_MAX = 2 << 20  # bytes of one step's output shown, as BuildKit's default


def _log_limit() -> int:
    """BuildKit's ``BUILDKIT_STEP_LOG_MAX_SIZE`` (bytes; -1: no limit), else 2 MiB."""
    try:
        return int(os.environ.get("BUILDKIT_STEP_LOG_MAX_SIZE", _LOG_MAX))
    except ValueError:
        return _LOG_MAX


def mode_from_env() -> str:
    """What ``--progress auto`` means: ``$BUILDKIT_PROGRESS`` when it is set, as buildx
    reads it (a CI job sets ``BUILDKIT_PROGRESS=plain`` once for all its builds), else
    ``auto``; raises ``ValueError`` naming a value pybuild does not take."""
    value = os.environ.get("BUILDKIT_PROGRESS", "").strip().lower()
    if value in ("plain", "json", "quiet"):
        return value
    if value in ("", "auto", "tty"):  # tty: the live view, where stderr is a terminal
        return "auto"
    raise ValueError(f"BUILDKIT_PROGRESS={value}: pybuild takes auto, plain, tty, json or "
                     "quiet there; set one of those, or unset it")


_TRANSFER_EVERY = 0.25  # JSON: seconds between two transfer events of one blob


def age(seconds: float) -> str:
    """``45 seconds``, ``12 minutes``, ``5 hours``, ``3 days``."""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


class BuildProgress:
    """Thread-safe: steps running in worker threads report their output lines here."""

    def __init__(self, mode: str = "plain", out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        if mode == "auto":
            mode = "tty" if live(self.out) else "plain"
        self.mode = mode
        self._n = 0
        self._lock = threading.Lock()
        self._start: dict[int, float] = {}
        self.cached_names: list[str] = []
        self.ran: list[str] = []
        self._names: dict[int, str] = {}
        self._active: dict[int, str] = {}
        # step -> blob id -> [label, done, total, status, time of the last JSON event]
        self._transfers: dict[int, dict[str, list[object]]] = {}
        self._drawn = 0
        self._ticker: threading.Thread | None = None
        self._log_max = _log_limit()
        self._logged: dict[int, int] = {}  # step -> bytes of output shown
        # (kind, text) of each start/unreplayable/info/error/base, in order: what a fast
        # path replays
        self.events: list[tuple[str, str]] = []

    def _emit(self, event: dict[str, object], line: str | None) -> None:
        with self._lock:
            if self.mode == "json":
                self.out.write(json.dumps(event) + "\n")
            elif self.mode == "quiet":
                return
            elif self.mode == "tty":
                self._tty(event)
            elif line is not None:
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
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, name="progress",
                                                daemon=True)
                self._ticker.start()
        elif kind == "log":
            self._active[n] = str(event["line"])[-100:]
        elif kind == "transfer":
            pass  # drawn with the running block below
        elif kind in ("done", "cached", "error"):
            self._active.pop(n, None)
            secs = time.monotonic() - self._start.get(n, time.monotonic())
            done_line = {"done": color("34", f"=> {name}  {secs:.1f}s"),
                         "cached": color("34", f"=> CACHED {name}"),
                         "error": color("31", f"=> ERROR {name}: {event.get('message')}")}[
                str(kind)]
        elif kind == "base":
            done_line = self._base_line(event)
        else:
            done_line = str(event.get("reason") or event.get("message") or event.get("digest"))
        self._redraw(done_line)

    def _redraw(self, done_line: str | None) -> None:
        """Erase the running block, print what finished, draw the block again."""
        self.out.write("\x1b[1A\x1b[2K" * self._drawn)
        if done_line is not None:
            self.out.write(done_line + "\n")
        lines = []
        now = time.monotonic()
        # each line of the block clipped to the terminal: a wrapped one would take rows
        # the next redraw does not erase
        width = columns(self.out)
        for m, last in self._active.items():
            secs = now - self._start.get(m, now)
            lines.append(clip(f"=> {self._names.get(m, '')}  {secs:.1f}s", width))
            for label, done, total, status, _ in self._transfers.get(m, {}).values():
                lines.append(clip(f"   {label}  {human_bytes(done)} / "  # type: ignore[arg-type]
                                  f"{human_bytes(total)}{'  ' + str(status) if status else ''}",  # type: ignore[arg-type]
                                  width))
            if last:
                lines.append(color("2", clip(f"   {last}", width)))
        self.out.write("".join(line + "\n" for line in lines))
        self._drawn = len(lines)

    def _tick(self) -> None:
        """Redraws the running steps (their timers) until none runs."""
        while True:
            time.sleep(TICK)
            with self._lock:
                if not self._active:
                    self._ticker = None
                    return
                try:
                    self._redraw(None)
                    self.out.flush()
                except (OSError, ValueError):  # the terminal went away
                    self._ticker = None
                    return

    # -- events ---------------------------------------------------------------------------
    def start(self, name: str, *, replayable: bool = True) -> int:
        """A step begins. ``replayable=False``: a step a fast-path replay of this build
        would wrongly repeat (a pull): the build is not recorded for the fast path, so
        the next one runs in full and reports what it finds then (the local base)."""
        with self._lock:
            self._n += 1
            n = self._n
            self._start[n] = time.monotonic()
            self._names[n] = name
            self.events.append(("start" if replayable else "unreplayable", name))
        self._emit({"event": "start", "step": n, "name": name}, f"#{n} {name}")
        return n

    def log(self, n: int, line: str) -> None:
        """One line of step ``n``'s output; past the log limit (as BuildKit's), one line
        saying so and nothing more of the step."""
        with self._lock:
            shown = self._logged.get(n, 0)
            self._logged[n] = shown + len(line) + 1
        if self._log_max >= 0 and shown + len(line) + 1 > self._log_max:
            if shown <= self._log_max:
                limit = human_bytes(self._log_max).replace(".0 ", "").replace(" ", "")
                self._emit({"event": "log", "step": n, "line": f"[output clipped, log limit "
                            f"{limit} reached]"}, f"#{n} [output clipped, log limit {limit} "
                           "reached]")
                with self._lock:
                    self._logged[n] = self._log_max + 1
            return
        elapsed = time.monotonic() - self._start.get(n, time.monotonic())
        self._emit({"event": "log", "step": n, "line": line}, f"#{n} {elapsed:.3f} {line}")

    def transfer(self, n: int, key: str, label: str, done: int, total: int,
                 status: str = "") -> None:
        """Bytes of one blob that step ``n`` pulls or pushes; ``status`` set at its end
        (pulled, pushed, exists, mounted, failed...)."""
        now = time.monotonic()
        with self._lock:
            entry = self._transfers.setdefault(n, {}).get(key)
            last = float(entry[4]) if entry else 0.0  # type: ignore[arg-type]
            if status:
                self._transfers[n].pop(key, None)
            else:
                self._transfers[n][key] = [label, done, total, status, last]
            if not status and (self.mode != "json" or now - last < _TRANSFER_EVERY):
                return  # the live view draws it at the next tick; plain lines at the end
            if not status:
                self._transfers[n][key][4] = now
        self._emit({"event": "transfer", "step": n, "id": key, "label": label, "done": done,
                    "total": total, "status": status},
                   f"#{n} {label} {human_bytes(done)} / {human_bytes(total)} {status}")

    def cached(self, n: int) -> None:
        self.cached_names.append(self._names.get(n, ""))
        self._emit({"event": "cached", "step": n}, f"#{n} CACHED")

    def done(self, n: int) -> None:
        secs = time.monotonic() - self._start.get(n, time.monotonic())
        self.ran.append(self._names.get(n, ""))
        with self._lock:
            self._transfers.pop(n, None)
        self._emit({"event": "done", "step": n, "seconds": round(secs, 3)},
                   f"#{n} DONE {secs:.1f}s")

    def error(self, n: int, message: str) -> None:
        self.events.append(("error", message))
        self._emit({"event": "error", "step": n, "message": message}, f"#{n} ERROR: {message}")

    def explain(self, n: int, reason: str) -> None:
        self._emit({"event": "explain", "step": n, "reason": reason},
                   f"#{n} cache miss: {reason}")

    def explain_hit(self, n: int, source: str) -> None:
        """``--explain`` for a cached step: the cache that had it (``local``, or a
        ``--cache-from`` such as ``type=registry,ref=...``)."""
        self._emit({"event": "explain", "step": n, "hit": source},
                   f"#{n} cache hit: {source}")

    def info(self, text: str) -> None:
        self.events.append(("info", text))
        self._emit({"event": "info", "message": text}, text)

    def collected(self, message: str, fields: dict[str, object]) -> None:
        """The build cache was brought within its bound after the build (builder.autogc):
        ``{"event": "gc", ...fields, "message"}``; not among the events a fast path replays."""
        self._emit({"event": "gc", **fields, "message": message}, message)

    def base_image(self, ref: str, digest: str, pulled: float) -> None:
        """A base image was taken from the local store without asking its registry
        (no ``--pull``): which one, and when it was pulled (epoch seconds)."""
        self.events.append(("base", json.dumps([ref, digest, pulled])))
        event: dict[str, object] = {
            "event": "base", "ref": ref, "digest": digest,
            "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pulled)),
            "age_seconds": max(0, int(time.time() - pulled))}
        self._emit(event, self._base_line(event))

    @staticmethod
    def _base_line(event: dict[str, object]) -> str:
        return (f"using local image {event['ref']} ({event['digest']}), pulled "
                f"{age(float(event['age_seconds']))} ago ({event['pulled']}); "  # type: ignore[arg-type]
                "build with --pull to check the registry for a newer one")

    def failed(self, message: str, exit_code: int) -> None:
        """The build failed (or was interrupted): with ``--progress json`` the stream ends
        with ``{"event": "error", "message", "exit_code"}`` (no ``step``), as ``pybuild
        pull --json`` does; the other modes have the ``ERROR:`` line the command prints."""
        if self.mode == "json":
            self._emit({"event": "error", "message": message, "exit_code": exit_code}, None)

    def result(self, digest: str, image_id: str) -> None:
        """The image made: its manifest (or index) digest and its image ID (the config's
        digest; an index's own), which the line shows as BuildKit's ``writing image``
        does, the ID that ``-q``, ``--iidfile`` and ``inspect .Id`` give."""
        self._emit({"event": "result", "digest": digest, "image_id": image_id},
                   f"writing image {image_id} done")
