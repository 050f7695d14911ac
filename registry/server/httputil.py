"""Small HTTP helpers shared by the handlers: Range parsing, pagination, body reading."""

from __future__ import annotations

import re
from urllib.parse import quote

from aiohttp import web

from ..errors import (
    PAGINATION_NUMBER_INVALID,
    RANGE_INVALID,
    UNSUPPORTED,
    RegistryError,
)

__all__ = [
    "DEFAULT_PAGE",
    "MAX_PAGE",
    "MAX_POSITION",
    "MAX_RANGES",
    "ClientGone",
    "check_transfer_coding",
    "next_link",
    "origin_form",
    "parse_content_range",
    "parse_page",
    "parse_range",
    "parse_ranges",
    "range_not_satisfiable",
]

# An absolute-form request target (RFC 9112 3.2.2): scheme "://" authority, then the path.
_ABSOLUTE = re.compile(r"^[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)(.*)$", re.DOTALL)

MAX_PAGE = 1000
DEFAULT_PAGE = 1000


class ClientGone(ConnectionResetError):
    """The client hung up, or stopped reading, while a response was being sent: nothing
    the server did wrong (the middleware logs one line and closes the connection)."""


# Byte positions are ASCII digits only (``\d`` would admit "٣"), at most 19 of them: like
# Go's ParseInt in CNCF Distribution, anything past int64 is not a position.
_POS = r"[0-9]{0,19}"
# The range unit is case-insensitive (RFC 9110 14.1): "Bytes=0-1" is "bytes=0-1", whether
# it holds one range or several. (Go's http.ServeContent, so CNCF Distribution, answers 416
# to any unit not spelled "bytes"; a range a client can read is the kinder answer.)
_RANGE = re.compile(rf"^bytes=({_POS})-({_POS})$", re.IGNORECASE)
# Spec "Pushing a blob in chunks": ^[0-9]+-[0-9]+$; "bytes=" and "bytes " are tolerated
# because some clients send RFC 9110 style.
_CONTENT_RANGE = re.compile(rf"^(?:bytes[= ])?({_POS})-({_POS})(?:/(?:[0-9]{{1,19}}|\*))?$")
_PAGE_SIZE = re.compile(r"^[0-9]{1,19}$")
MAX_POSITION = (1 << 63) - 1
# The most ranges one multipart answer has: what a zstd:chunked partial pull asks for at
# most (containers/storage merges the chunks it lacks down to 1,024).
MAX_RANGES = 1024


def origin_form(target: str) -> tuple[str, str | None] | None:
    """An absolute-form request target (``GET http://host/v2/ HTTP/1.1``, which RFC 9112
    3.2.2 says a server MUST accept, and Go's server, so CNCF Distribution, does) as the
    origin form it stands for and the host it names (None when it names none); None when
    ``target`` is not in absolute form. Its path is checked as any other raw path is."""
    found = _ABSOLUTE.match(target)
    if found is None:
        return None
    authority, rest = found.groups()
    host = authority.rpartition("@")[2] or None  # user information is never a host
    if not rest.startswith("/"):
        rest = "/" + rest  # "http://host" and "http://host?q" ask for the root
    return rest, host


def check_transfer_coding(request: web.BaseRequest) -> None:
    """Refuse a body in a transfer coding other than ``chunked`` alone (``Transfer-Encoding:
    gzip, chunked``) with 501, as RFC 9112 6.1 asks and Go's server (CNCF Distribution's)
    answers: aiohttp reads only the chunked framing and would hand on the still-encoded
    bytes as the body, which an upload would then store as the blob."""
    codings = [c.strip().lower() for value in request.headers.getall("Transfer-Encoding", ())
               for c in value.split(",") if c.strip()]
    if codings and codings != ["chunked"]:
        raise UNSUPPORTED(
            f"Transfer-Encoding {_clip(', '.join(codings))!r} is not supported: send the "
            "body with 'Transfer-Encoding: chunked' alone, or with a Content-Length",
            status=501,
        )


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """A ``Range`` header -> ``(offset, length)`` to serve, or None for the whole blob.

    One range only (RFC 9110 allows a server to ignore multi-range requests and send
    200). Unsatisfiable or malformed single ranges raise RANGE_INVALID (416).
    """
    if not header:
        return None
    text = header.strip()
    if "," in text:
        return None
    m = _RANGE.match(text.replace(" ", ""))
    if m is None:
        raise range_not_satisfiable(f"malformed Range header {_clip(header)!r}", size)
    first, last = m.group(1), m.group(2)
    if (first == "" and last == "") or max(int(first or 0), int(last or 0)) > MAX_POSITION:
        raise range_not_satisfiable(f"malformed Range header {_clip(header)!r}", size)
    if first == "":
        suffix = int(last)
        if suffix == 0:
            raise range_not_satisfiable("a zero-length suffix range selects nothing", size)
        if size == 0:
            # Satisfiable (RFC 9110 14.1.1), but no Content-Range can name zero bytes (Go
            # writes "bytes 0--1/0"): the whole, empty, blob is the answer (200).
            return None
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size or (last != "" and int(last) < start):
        raise range_not_satisfiable(
            f"range {header!r} is outside a blob of {size} bytes", size
        )
    return start, end - start + 1


def parse_ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """A ``Range`` header -> the ``(offset, length)`` spans to serve, or None for the
    whole blob. One range is read as :func:`parse_range` reads it.

    Of several ranges, those that start past the end (or select nothing) are left out
    (RFC 9110 14.1.2), whatever their last-pos, as Go's ``http.ServeContent`` leaves them
    out; if none is left the header is unsatisfiable (416), and a malformed one (not
    digits, or a last-pos before a first-pos inside the blob) makes the whole header
    RANGE_INVALID. One range left is answered as a single range (206, ``Content-Range``).
    Spans are neither merged nor reordered: containers/image takes the parts of a
    multipart answer as the chunks it asked for, in order. Spans that add up to more
    than the blob (overlaps, the same range many times) get the whole blob instead, as
    from Go's ``http.ServeContent`` (CNCF Distribution's), and so do more than
    :data:`MAX_RANGES` (each part costs a lookup of its pieces; RFC 9110 lets a server
    answer many small ranges with the whole). A non-zero suffix range of an empty blob
    selects the whole of it, which no ``Content-Range`` can name: the whole blob too.
    """
    if not header or "," not in header:
        single = parse_range(header, size)
        return None if single is None else [single]
    unit, sep, specs = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or not sep:
        raise range_not_satisfiable(f"malformed Range header {_clip(header)!r}", size)
    spans: list[tuple[int, int]] = []
    total = 0
    empty_suffix = False
    for spec in specs.split(","):
        if not spec.strip():
            continue  # an empty list element (RFC 9110 5.6.1: recipients accept them)
        m = _RANGE.match("bytes=" + spec.replace(" ", ""))
        if m is None or (m.group(1) == "" and m.group(2) == "") or (
                max(int(m.group(1) or 0), int(m.group(2) or 0)) > MAX_POSITION):
            raise range_not_satisfiable(f"malformed Range header {_clip(header)!r}", size)
        first, last = m.group(1), m.group(2)
        if first == "":
            if size == 0 and int(last) > 0:
                empty_suffix = True  # the whole, empty, blob (as parse_range answers it)
                continue
            start = max(0, size - int(last))
        else:
            start = int(first)
            if start >= size:
                # Past the end: left out before its last-pos is looked at, as Go's
                # parseRange does, so "0-1,5000-10" on a short blob is the range 0-1.
                continue
            if last != "" and int(last) < start:
                raise range_not_satisfiable(
                    f"malformed Range header {_clip(header)!r}: range {spec.strip()!r} "
                    "ends before it starts", size)
        end = size - 1 if first == "" or last == "" else min(int(last), size - 1)
        if end < start:
            continue
        spans.append((start, end - start + 1))
        total += end - start + 1
    if empty_suffix:
        return None
    if not spans:
        raise range_not_satisfiable(
            f"no range of {_clip(header)!r} is inside a blob of {size} bytes", size
        )
    return None if total > size or len(spans) > MAX_RANGES else spans


def range_not_satisfiable(message: str, size: int) -> RegistryError:
    return RANGE_INVALID(
        message, detail={"size": size}, headers={"Content-Range": f"bytes */{size}"}
    )


def parse_content_range(header: str | None) -> tuple[int, int] | None:
    """An upload chunk's ``Content-Range: <start>-<end>`` (inclusive) or None if absent."""
    if header is None:
        return None
    m = _CONTENT_RANGE.match(header.strip())
    if m is None or not m.group(1) or not m.group(2) or int(m.group(2)) > MAX_POSITION:
        raise RANGE_INVALID(
            f"malformed Content-Range {_clip(header)!r}: expected '<start>-<end>', inclusive",
        )
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RANGE_INVALID(f"Content-Range {header!r} ends before it starts")
    return start, end


def parse_page(request: web.Request) -> tuple[int | None, str | None]:
    """``n`` and ``last`` query parameters; n None means 'no n given' (also ``n=``, as
    Distribution reads an empty one)."""
    text = request.query.get("n")
    n: int | None = None
    if text:
        if not _PAGE_SIZE.match(text) or int(text) > MAX_POSITION:
            raise PAGINATION_NUMBER_INVALID(
                f"n={_clip(text)!r}: expected a non-negative integer (ASCII digits)",
                detail={"n": _clip(text)},
            )
        n = int(text)
    return n, request.query.get("last")


def _clip(text: str, limit: int = 64) -> str:
    """``text`` shortened for an error message (a client's header can be 8 KiB)."""
    return text if len(text) <= limit else text[:limit] + "..."


def next_link(path: str, n: int, last: str, **extra: str) -> str:
    """An RFC 5988 ``Link`` header value with ``rel="next"``."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in (("n", str(n)), ("last", last), *extra.items()))
    return f'<{path}?{query}>; rel="next"'

