"""Lines a live progress view redraws in place, fitted to the terminal they are drawn on.

A view moves the cursor up by the number of lines it drew (or back to the start of its
one status line) to draw them again; a line wider than the terminal wraps onto more
rows than that, and each redraw then leaves rows of the previous one behind. So every
line redrawn in place is clipped to the terminal's width, as BuildKit's and Docker's
views do. Colours are left out when ``NO_COLOR`` is set (https://no-color.org). A
terminal that declares it moves no cursor (``TERM=dumb``: Emacs' shell, some CI log
viewers) gets no live view at all: :func:`live` says so, and the views print plain lines.
"""

from __future__ import annotations

import os
import unicodedata
from typing import TextIO

__all__ = ["clip", "color", "columns", "live", "rows"]


def live(stream: TextIO) -> bool:
    """Whether a view redrawn in place may be drawn on ``stream``: a terminal, and not a
    dumb one (which shows cursor moves as garbage)."""
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except ValueError:  # a closed stream
        return False


def columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to (asked at each redraw: a window can
    be resized); ``$COLUMNS`` or 80 when it is not one."""
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        import shutil  # only here: most commands never ask

        return shutil.get_terminal_size().columns


def rows(stream: TextIO) -> int:
    """The height of the terminal ``stream`` writes to (asked at each redraw); ``$LINES``
    or 24 when it is not one. A view taller than this cannot move the cursor back to its
    first line: each redraw would scroll the one before it out, for good."""
    try:
        return os.get_terminal_size(stream.fileno()).lines or 24
    except (AttributeError, OSError, ValueError):
        import shutil

        return shutil.get_terminal_size().lines


def clip(text: str, width: int) -> str:
    """``text`` cut to fit in ``width - 1`` columns (a character of East Asian width W or F
    takes two); the last column is left free so a terminal never wraps the line."""
    room = max(width - 1, 1)
    used = 0
    for i, char in enumerate(text):
        used += 2 if unicodedata.east_asian_width(char) in "WF" else 1
        if used > room:
            return text[:i]
    return text


def color(code: str, text: str) -> str:
    """``text`` in SGR colour ``code`` (``34``: blue, ``2``: dim), or plain under NO_COLOR."""
    if os.environ.get("NO_COLOR"):
        return text
    return f"\x1b[{code}m{text}\x1b[0m"
