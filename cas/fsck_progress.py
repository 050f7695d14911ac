"""What ``pybuild storage fsck`` shows while it verifies: a bar on a terminal, a plain
line every few seconds otherwise (CI logs), or JSON events; always on standard error,
so that standard output holds only the result (``--json``: one object)."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from .maintenance import FsckProgress
from .units import human_bytes

__all__ = ["FsckView"]

_TTY_EVERY = 0.1  # redraws of the bar, at most
_PLAIN_EVERY = 5.0  # a line in a log: a short check prints none
_JSON_EVERY = 1.0


class FsckView:
    """Renders :class:`~cas.maintenance.FsckProgress` updates (called from the thread
    that checks) in one of three modes: ``tty``, ``plain`` or ``json``."""

    def __init__(self, mode: str, stream: TextIO) -> None:
        if mode not in ("tty", "plain", "json"):
            raise ValueError(f"fsck progress mode {mode!r}: use tty, plain or json")
        self.mode = mode
        self.stream = stream
        self.started = time.monotonic()
        self._last = self.started if mode == "plain" else 0.0
        self._drawn = False

    @classmethod
    def auto(cls, *, json_events: bool = False, stream: TextIO | None = None) -> FsckView:
        out = stream or sys.stderr
        if json_events:
            return cls("json", out)
        return cls("tty" if out.isatty() else "plain", out)

    def update(self, p: FsckProgress) -> None:
        now = time.monotonic()
        every = {"tty": _TTY_EVERY, "plain": _PLAIN_EVERY, "json": _JSON_EVERY}[self.mode]
        if now - self._last < every and p.blobs_done < p.blobs:
            return
        if self.mode == "plain" and p.blobs_done >= p.blobs and now - self.started < _PLAIN_EVERY:
            return  # short: the result line says it all
        self._last = now
        if self.mode == "json":
            self._write(json.dumps({"event": "progress", "blobs_done": p.blobs_done, "blobs": p.blobs,
                                    "bytes_done": p.bytes_done, "bytes": p.bytes}) + "\n")
        elif self.mode == "plain":
            self._write(f"fsck: {self._words(p)}\n")
        else:
            self._write(f"\r\x1b[Kverifying {self._bar(p)} {self._words(p)}")
            self._drawn = True

    def close(self) -> None:
        """Clear the bar (the result is printed after it)."""
        if self._drawn:
            self._write("\r\x1b[K")
            self._drawn = False

    def _words(self, p: FsckProgress) -> str:
        share = f" ({p.bytes_done * 100 // p.bytes} %)" if p.bytes else ""
        return (f"{human_bytes(p.bytes_done)} of {human_bytes(p.bytes)}{share}, "
                f"{p.blobs_done} of {p.blobs} blobs")

    @staticmethod
    def _bar(p: FsckProgress, width: int = 24) -> str:
        filled = width * p.bytes_done // p.bytes if p.bytes else width
        return "[" + "=" * filled + " " * (width - filled) + "]"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: the check goes on
            pass
