"""The check of a ranged blob GET's 206 answer against the range that was asked for.

A ``206 Partial Content`` to ``Range: bytes=<start>-<end>`` must carry
``Content-Range: bytes <first>-<last>/<size>`` (RFC 9110 14.4) with ``first`` the start
asked for and ``last`` the end asked for (or the blob's last byte, when the range runs
past it), and, when it declares one, a ``Content-Length`` of ``last - first + 1``. Any
other answer (another range, none, several parts) would put bytes at the wrong offset of
the blob: it is refused before a byte of its body is read, naming what the registry
answered. (The digest check at the end of a pull would refuse the blob too, but only
after the whole of it had been fetched, and without saying why.)
"""

from __future__ import annotations

import re

from .transfer import BlobError

__all__ = ["WrongRange", "check_content_range"]

# Compiled on first use (re caches it): a pull that fetches nothing parses no range.
_CONTENT_RANGE = r"^bytes\s+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)$"


class WrongRange(BlobError):
    """A 206 answer to a ranged blob GET that is not the range asked for. A BlobError:
    asking again would get the same answer, so the blob's pull stops (what arrived
    before, from right answers, is dropped with it)."""


def check_content_range(
    what: str, asked: str, start: int, end: int | None, content_range: str | None,
    length: int | None,
) -> None:
    """Raise WrongRange unless ``content_range`` (and the body's declared ``length``)
    answer the request ``asked`` (``bytes=<start>-<end>``, ``end`` None for "to the
    end") for ``what`` (the blob, as named in the message)."""
    shown = "none" if content_range is None else repr(content_range[:100])

    def refuse(why: str) -> WrongRange:
        return WrongRange(
            f"{what}: asked for Range {asked}, the registry answered 206 with Content-Range "
            f"{shown}{why}; nothing of that answer was kept - the registry (or a proxy in "
            "front of it) serves wrong ranges: tell its operator"
        )

    found = re.match(_CONTENT_RANGE, content_range.strip(), re.IGNORECASE) if content_range else None
    if found is None:
        raise refuse(" (not one range 'bytes <first>-<last>/<size>')")
    first, last = int(found.group(1)), int(found.group(2))
    total = None if found.group(3) == "*" else int(found.group(3))
    if first != start:
        raise refuse(f" (it starts at byte {first}, not {start})")
    if last < first or (total is not None and last >= total):
        raise refuse(" (not a range inside the blob)")
    # The end asked for, or the blob's last byte when the range runs past it.
    if total is not None:
        expected: int | None = total - 1 if end is None else min(end, total - 1)
    else:
        expected = end
    if (expected is not None and last != expected) or (end is not None and last > end):
        raise refuse(f" (it ends at byte {last}, not {expected if expected is not None else end})")
    if length is not None and length != last - first + 1:
        raise refuse(f" with a body of {length} bytes, not {last - first + 1}")
