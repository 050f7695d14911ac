"""Durations and sizes as people write them in flags and configuration.

One parser of each, for every package above (``cas`` is the lowest, so all can import it):

- :func:`parse_duration`: Go's ``time.ParseDuration`` syntax (``HEALTHCHECK --interval``,
  BuildKit and Distribution write durations so) and days (``pybuild builder prune
  --older-than 7d``); :func:`parse_seconds`, the same or a bare number of seconds, is what
  every command-line option that takes a time span reads (``storage gc --grace 1h``).
- :func:`parse_size`: Docker's ``RAMInBytes`` syntax (``--mount=type=tmpfs,size=64m``,
  ``docker run --tmpfs``): binary units.
"""

from __future__ import annotations

import re

__all__ = ["human_bytes", "human_duration", "parse_duration", "parse_seconds", "parse_size"]

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
# Patterns, compiled on first use (re caches them): most commands parse no size or duration.
_DURATION_PART = _NUMBER + r"\s*(ns|us|µs|μs|ms|s|m|h|d)"
_NS_PER_UNIT = {"ns": 1, "us": 1000, "µs": 1000, "μs": 1000, "ms": 10**6, "s": 10**9,
                "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9}


def parse_duration(text: str, *, bare_unit: str | None = None) -> int:
    """A duration in nanoseconds; raises ``ValueError``.

    Accepts the union of what pybuild's callers take: Go's duration syntax without a sign
    (``0``, or one or more ``<number><unit>``: ``30s``, ``1m30s``, ``1.5h``, ``.5ms``; units
    ``ns``, ``us`` (``µs``), ``ms``, ``s``, ``m``, ``h``), plus the unit ``d`` (24 h), blanks
    around the value and between a number and its unit. A number without a unit is an error
    (as in Go, ``0`` excepted) unless ``bare_unit`` names the unit to read it in
    (``--older-than 3600`` is seconds). Numbers are read exactly, as Go does (``512.3us``
    is 512300 ns), and a fraction of a nanosecond is dropped.
    """
    from decimal import Decimal  # exact, as Go reads durations; imported when used

    value = text.strip()
    if not value:
        raise ValueError(f"invalid duration {text!r}: empty")
    if value == "0":
        return 0
    if bare_unit is not None and re.fullmatch(_NUMBER, value):
        return int(Decimal(value) * _NS_PER_UNIT[bare_unit])
    pos, total = 0, Decimal(0)
    while pos < len(value):
        m = re.compile(_DURATION_PART).match(value, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += Decimal(m.group(1)) * _NS_PER_UNIT[m.group(2)]
        pos = m.end()
    return int(total)


def parse_seconds(text: str) -> float:
    """A time span given to a command-line option, in seconds: any duration
    :func:`parse_duration` reads (``0s``, ``90s``, ``30m``, ``1h30m``, ``48h``, ``7d``) or a
    bare number of seconds (``3600``). Raises ``ValueError`` saying what is expected."""
    try:
        return parse_duration(text, bare_unit="s") / 1e9
    except ValueError:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 48h or 7d "
                         "(a bare number is seconds)") from None


_SIZE = r"(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?"


def parse_size(text: str) -> int:
    """A size in bytes: ``64m``, ``1g``, ``1.5GiB``, ``512``, ``512b``; units ``k`` to ``p``
    are binary (``64m`` is 64 MiB), with or without ``i``/``b``, any case, blanks around the
    value and before the unit. Raises ``ValueError``."""
    m = re.fullmatch(_SIZE, text.strip(), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    power = " kmgtp".index(m.group(2).lower() or " ")
    return int(float(m.group(1)) * 1024**power)


def human_bytes(n: float) -> str:
    """``n`` bytes as people read them: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (binary units,
    the ones :func:`parse_size` reads)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_duration(seconds: float) -> str:
    """Docker's ``units.HumanDuration``."""
    s = int(seconds)
    minutes, hours = int(seconds / 60), int(seconds / 3600 + 0.5)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"
