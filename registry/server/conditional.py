"""Conditional requests on blobs and manifests: ``If-None-Match`` and ``If-Range``
(RFC 9110 13.1.2 and 13.1.5), read as Go's ``http.ServeContent`` (CNCF Distribution's
blob handler) reads them.

A blob's or manifest's ETag is its quoted digest, a *strong* validator: the bytes behind
a digest never change.

- ``If-None-Match`` uses the weak comparison: ``W/"<digest>"`` matches ``"<digest>"``
  (a cache or proxy that compressed the answer, as nginx's gzip does, weakens the ETag it
  passes on and revalidates with the weak one), any member of a list may match, and
  ``*`` matches anything that exists. The bare digest, unquoted, matches too, as
  Distribution's manifest handler accepts it.
- ``If-Range`` uses the strong comparison: only the quoted digest itself keeps the
  ``Range``. A weak tag, another tag or a date (these answers carry no
  ``Last-Modified``) means the client's copy may be another one: the ``Range`` is
  ignored and the whole content is sent (200), so a resumed download never splices
  bytes of two different objects.
"""

from __future__ import annotations

import re

from aiohttp import web

__all__ = ["if_none_match", "if_range_holds", "none_match"]

# One member of an If-None-Match list: an optional weakness prefix, then the opaque tag
# (quoted, or the bare digest that Distribution also accepts).
_MEMBER = re.compile(r'^(W/)?("[^"]*"|[^",\s]+)$')


def _opaque_tags(header: str) -> list[str]:
    """The opaque tags (without quotes or weakness prefix: the weak comparison) of an
    entity-tag list; members that are not entity tags are left out (they match nothing)."""
    out = []
    for part in header.split(","):
        m = _MEMBER.match(part.strip())
        if m is not None:
            out.append(m.group(2).strip('"'))
    return out


def none_match(header: str | None, digest: str) -> bool:
    """Whether ``If-None-Match: header`` matches the object named ``digest`` (so a GET or
    HEAD is answered 304 Not Modified)."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    return digest in _opaque_tags(header)


def if_none_match(request: web.Request) -> str | None:
    """Every ``If-None-Match`` field of ``request`` as one list (a client may send several
    fields, as Distribution's manifest handler reads them), or None without one."""
    values = request.headers.getall("If-None-Match", ())
    return ", ".join(values) if values else None


def if_range_holds(header: str | None, digest: str) -> bool:
    """Whether a ``Range`` may be served under ``If-Range: header``: true without the
    header (or with an empty one, as Go reads it), else only for the strong ETag
    ``"<digest>"``."""
    if header is None or not header.strip():
        return True
    return header.strip() == f'"{digest}"'
