"""Requests that aiohttp's HTTP parser refuses before any handler sees them, answered in
the registry's JSON error format with a message that names the limit and the fix.

aiohttp answered them ``HTTP/1.0 400`` in plain text that echoed the start of the
offending line as a Python repr (``Got more than 8190 bytes when reading:
bytearray(b'/v2/aaa...')``, ``Too many headers received``, ``Invalid method
encountered``). Go's net/http (so CNCF Distribution) answers a head over its limit
``431 Request Header Fields Too Large``, and a method it does not route ``405``::

    request target over max_line_size (8,190 bytes)     431, UNSUPPORTED, names the limit
    a header line over max_field_size (32 KiB)          431, UNSUPPORTED, names the limit
    more than max_headers (128) header lines            431, UNSUPPORTED, names the limit
    a method the parser does not know (FOO, get)        405, UNSUPPORTED, lists the methods

Anything else (HTTPS sent to the plain port, a malformed request line) keeps aiohttp's
answer, which says what it is. :func:`install` hooks every connection's handler, as
:meth:`.limits.ConnectionGuard.install` does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler

from ..errors import UNSUPPORTED, RegistryError, encode_errors

__all__ = ["install", "parse_error"]

_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS"


def parse_error(handler: Any, exc: BaseException | None) -> RegistryError | None:
    """The registry's error for ``exc``, a parse error of ``handler``'s connection
    (aiohttp's ``RequestHandler``, whose limits it names), or None to keep aiohttp's."""
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "?"
        if limit == handler.max_line_size:
            what = (f"the request target (URL) is longer than {limit} bytes, the most this "
                    "registry reads: send a shorter one (fewer or shorter query parameters)")
        else:
            what = (f"a header line is longer than {limit} bytes, the most this registry "
                    "reads: send shorter headers (a long Range header: fewer ranges per request)")
        return UNSUPPORTED(what, status=431)
    if isinstance(exc, BadHttpMethod):
        if "HTTPS" in exc.message:  # TLS sent to the plain port: aiohttp's answer says so
            return None
        return UNSUPPORTED(f"the request's method is not one this registry serves (methods are "
                           f"case-sensitive): use {_METHODS}", status=405)
    if isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        return UNSUPPORTED(f"the request has more than {handler.max_headers} header lines, the most "
                           "this registry reads: send fewer headers", status=431)
    return None


def install(server: web.Server) -> None:
    """Answer the parse errors of every connection ``server`` makes as :func:`parse_error`
    says (its handler, made by aiohttp, becomes a :class:`_Handler`: the class has slots,
    so its ``handle_error`` cannot be replaced on the instance)."""
    made = server.connection_made

    def connection_made(handler: Any, transport: Any) -> None:
        if type(handler) is RequestHandler:
            handler.__class__ = _Handler
        made(handler, transport)

    server.connection_made = connection_made  # type: ignore[method-assign]


class _Handler(RequestHandler):
    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        err = parse_error(self, exc)
        if err is None:
            return super().handle_error(request, status, exc, message)
        self.logger.info("bad request from %s: %s", request.remote, err.message)
        resp = web.Response(status=err.status, body=encode_errors(err), content_type="application/json",
                            headers={"Docker-Distribution-API-Version": "registry/2.0"})
        resp.force_close()
        return resp
