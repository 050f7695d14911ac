"""Reading answers that are not the spec's own, for :mod:`registry.client.session`:
``Retry-After`` (both of its forms), the error documents of object stores that a blob GET
is redirected to, and URLs as error messages may show them (a presigned URL's query
string is a credential), and small bodies sent with a ``Content-Encoding`` although the
client asked for none."""

from __future__ import annotations

import email.utils
import re
import time
import zlib
from urllib.parse import urlsplit, urlunsplit

from ..errors import RegistryError

__all__ = ["decoded", "each_said", "error_reason", "gave_up", "retry_after", "retry_delay", "same_origin",
           "shown_url", "storage_reason"]


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait: delta-seconds (``120``) or an
    HTTP-date (``Wed, 21 Oct 2026 07:28:00 GMT``; a date past is 0). None when there is
    no header or it is neither."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": taken as UTC, as RFC 9110 says dates are
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(header: str | None, attempt: int, limit: int, backoff: float,
                cap: float) -> tuple[float | None, float | None]:
    """How long to wait before trying a 429 or 5xx again, whose ``Retry-After`` is
    ``header`` (None: not again, after ``limit`` retries or when it asks for more than
    ``cap`` seconds): the backoff, or as long as ``Retry-After`` asks when that is
    longer; and what ``Retry-After`` asked (None: nothing)."""
    wait = retry_after(header)
    if attempt >= limit or (wait is not None and wait > cap):
        return None, wait
    return max(backoff * 2**attempt, wait or 0), wait


def gave_up(attempt: int, wait: float | None, limit: float, throttled: bool) -> str:
    """Why a throttled (429) or failing (5xx) request was not tried again."""
    if wait is not None and wait > limit:
        return (f" (the registry asks to wait {wait:.0f} s before trying again, over the "
                f"{limit:g} s pybuild waits; try again later)")
    why = "limits requests" if throttled else "is failing or overloaded"
    return f" (after {attempt + 1} attempts; the registry {why}: try again later)"


def same_origin(url: str, host: str) -> bool:
    """Whether ``url`` is on the registry's ``host`` (``host[:port]``): compared without
    case and with the scheme's default port made explicit, as Docker does (a registry
    behind a proxy may answer ``Location: https://Registry.example:443/...``)."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    try:
        there = (parts.hostname, parts.port or default)
        mine = urlsplit(f"//{host}")
        return there == (mine.hostname, mine.port or default)
    except ValueError:  # a port that is not a number
        return False


def shown_url(url: str, host: str) -> str:
    """``url`` for a message: without its query string when it is not on the registry's
    own ``host`` (a presigned URL's signature must not end up in logs)."""
    parts = urlsplit(url)
    if same_origin(url, host) or not parts.query:
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


_XML_FIELD = rb"<(Code|Message)>([^<]{1,300})</\1>"  # compiled on first use (re caches it)


def storage_reason(body: bytes) -> str | None:
    """``Code: Message`` of an object store's XML error (S3, GCS, Azure), else None."""
    if not body.lstrip().startswith(b"<"):
        return None
    found = dict(re.findall(_XML_FIELD, body[:4096]))
    parts = [found[k].decode("utf-8", "replace").strip() for k in (b"Code", b"Message") if k in found]
    return ": ".join(parts) or None


_HTML_TITLE = rb"<title>\s*([^<]{1,200}?)\s*</title>"

TOO_LARGE_FIX = ("the registry, or a proxy in front of it, refuses a request body this large: "
                 "raise its limit (nginx: client_max_body_size 0, as Distribution's nginx "
                 "recipe sets it)")


def error_reason(status: int, body: bytes, said: str) -> str | None:
    """What to show, instead of the raw body, for an error answer that is not the spec's
    JSON: an object store's ``Code: Message``, or the ``<title>`` of an HTML page (a
    proxy's: nginx answers 413 and 502 so); a 413 also says what to do (``said``: the
    registry's own message, kept when the body is neither). None: show ``said``."""
    reason = storage_reason(body)
    if reason is None and body.lstrip()[:1] == b"<":
        title = re.search(_HTML_TITLE, body[:4096], re.IGNORECASE)
        reason = title[1].decode("utf-8", "replace") if title else None
    if status == 413:
        return f"{reason or said} ({TOO_LARGE_FIX})"
    return reason


def each_said(err: RegistryError) -> str:
    """Every error of an answer (the spec allows several), each with its ``detail`` when that
    is a word (Distribution's ``MANIFEST_BLOB_UNKNOWN`` names the blob there), not the first
    one only: Distribution answers an invalid manifest with ``UNKNOWN`` first."""
    return "; ".join(e.args[0] + (f" ({e.detail})" if isinstance(e.detail, str) and e.detail else "")
                     for e in err.all())


def decoded(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A small body (manifest, tag list, token, error) as sent before ``Content-Encoding``
    (gzip or deflate; a proxy may compress JSON whatever ``Accept-Encoding`` said), at
    most ``limit`` bytes of it. Raises ValueError when it does not decompress."""
    coding = (encoding or "").strip().lower()
    if coding in ("", "identity"):
        return body
    if coding not in ("gzip", "x-gzip", "deflate"):
        raise ValueError(f"unknown Content-Encoding {coding!r}")
    wbits = 16 + zlib.MAX_WBITS if coding != "deflate" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"a body sent with Content-Encoding {coding} does not decompress: {exc}") from None
    if len(out) > limit:
        raise ValueError(f"a body sent with Content-Encoding {coding} is over {limit} bytes")
    return out
