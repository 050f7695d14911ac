"""What ``pybuild storage fsck`` and ``gc`` show while they work: a bar or status line on
a terminal, a plain line every few seconds otherwise (CI logs), or JSON events; always
on standard error, so that standard output holds only the result (``--json``: one object)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from .maintenance import FsckProgress, GcProgress
from .terminal import clip, columns, live
from .units import human_bytes

__all__ = ["FsckView", "GcView"]

_TTY_EVERY = 0.1  # redraws, at most
_PLAIN_EVERY = 5.0  # a line in a log: a short run prints none
_JSON_EVERY = 1.0


class _View:
    """Throttled rendering of progress updates (called from the thread that works) in
    one of three modes: ``tty``, ``plain`` or ``json``."""

    command = ""

    def __init__(self, mode: str, stream: TextIO) -> None:
        if mode not in ("tty", "plain", "json"):
            raise ValueError(f"{self.command} progress mode {mode!r}: use tty, plain or json")
        self.mode = mode
        self.stream = stream
        self.started = time.monotonic()
        self._last = self.started if mode == "plain" else 0.0
        self._drawn = False

    @classmethod
    def auto(cls, *, json_events: bool = False, stream: TextIO | None = None) -> Any:
        out = stream or sys.stderr
        if json_events:
            return cls("json", out)
        return cls("tty" if live(out) else "plain", out)

    def _show(self, event: dict[str, Any], words: str, *, last: bool, now_anyway: bool = False) -> None:
        now = time.monotonic()
        every = {"tty": _TTY_EVERY, "plain": _PLAIN_EVERY, "json": _JSON_EVERY}[self.mode]
        if now - self._last < every and not last and not now_anyway:
            return
        if self.mode == "plain" and now - self.started < _PLAIN_EVERY:
            return  # short: the result line says it all
        self._last = now
        if self.mode == "json":
            self._write(json.dumps({"event": "progress", **event}) + "\n")
        elif self.mode == "plain":
            self._write(f"{self.command}: {words}\n")
        else:
            # clipped: a line that wraps is not taken back by the next \r
            self._write(f"\r\x1b[K{clip(words, columns(self.stream))}")
            self._drawn = True

    def close(self) -> None:
        """Clear the status line (the result is printed after it)."""
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: the work goes on
            pass


class FsckView(_View):
    """``storage fsck``: blobs and bytes verified, of all."""

    command = "fsck"

    def update(self, p: FsckProgress) -> None:
        words = self._words(p)
        self._show({"blobs_done": p.blobs_done, "blobs": p.blobs, "bytes_done": p.bytes_done,
                    "bytes": p.bytes},
                   words if self.mode != "tty" else f"verifying {self._bar(p)} {words}",
                   last=p.blobs_done >= p.blobs)

    @staticmethod
    def _words(p: FsckProgress) -> str:
        share = f" ({p.bytes_done * 100 // p.bytes} %)" if p.bytes else ""
        return (f"{human_bytes(p.bytes_done)} of {human_bytes(p.bytes)}{share}, "
                f"{p.blobs_done} of {p.blobs} blobs")

    @staticmethod
    def _bar(p: FsckProgress, width: int = 24) -> str:
        filled = width * p.bytes_done // p.bytes if p.bytes else width
        return "[" + "=" * filled + " " * (width - filled) + "]"


_GC_PHASES = {"ingests": "aborting interrupted transfers", "blobs": "removing blobs",
              "pieces": "removing pieces", "space": "giving back space",
              "packs": "compacting packs"}


class GcView(_View):
    """``storage gc``: the phase it is in, and what it has done there."""

    command = "gc"

    def __init__(self, mode: str, stream: TextIO) -> None:
        super().__init__(mode, stream)
        self._phase = ""
        self._unshown: GcProgress | None = None  # a phase's latest count, not yet shown

    def update(self, p: GcProgress) -> None:
        changed, self._phase = p.phase != self._phase, p.phase
        if changed and self.mode == "json" and self._unshown is not None:
            self._draw(self._unshown, now_anyway=True)  # each phase's events end with its count
        self._unshown = p
        self._draw(p, now_anyway=changed)

    def _draw(self, p: GcProgress, *, now_anyway: bool) -> None:
        before = self._last
        of = f" of {p.total}" if p.total is not None else ""
        words = f"{_GC_PHASES.get(p.phase, p.phase)}: {p.done}{of}"
        self._show({"phase": p.phase, "done": p.done, "total": p.total},
                   words if self.mode != "tty" else f"gc: {words}",
                   last=p.total is not None and p.done >= p.total, now_anyway=now_anyway)
        if self._last != before:
            self._unshown = None
