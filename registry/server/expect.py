"""``Expect: 100-continue`` (RFC 9110 10.1.1), answered when the body is wanted.

A client that sends a large body (curl for any body over 1 MiB, ``curl -T layer -X PUT``;
Go and Java HTTP clients when told to) asks first whether the server wants it, and waits
(curl: one second) for ``100 Continue`` before sending. aiohttp's own handler sends
``100 Continue`` as soon as the request matches a route, before the middlewares and the
handler have run: a request then refused for its credentials (401), its repository name,
an unknown upload session or a body over the limit had the client send its body for
nothing. As Go's server (CNCF Distribution's) does, the ``100 Continue`` goes out here
only when a handler starts reading the body (:func:`send_continue`); a request refused
before that gets its final answer at once, and the client sends no body.

Every handler that reads a request body calls :func:`send_continue` first (the upload
bodies, manifests, the token form); one that forgot would only make the client wait
its own timeout before it sends the body anyway.

An answer to a request whose body was never asked for says ``Connection: close``
(:func:`close_unless_continued`; RFC 9110 10.1.1: the server says whether it will read
the body): the client sends no body, and the server does not wait for one.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.http import HttpVersion11

__all__ = ["CONTINUE_OWED", "close_unless_continued", "defer_continue", "send_continue"]

CONTINUE_OWED = web.RequestKey("continue_owed", bool)


async def defer_continue(request: web.Request) -> None:
    """The routes' ``expect_handler``: remembers that ``100 Continue`` is owed. Any other
    expectation is 417 Expectation Failed, as from aiohttp's own handler."""
    if request.version != HttpVersion11:
        return  # HTTP/1.0 has no 100 Continue: the client sends its body anyway
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect[:64]}")
    request[CONTINUE_OWED] = True


async def send_continue(request: web.Request) -> None:
    """Send the ``100 Continue`` a client waits for before its body, if it is owed and
    not sent yet. Call before the first read of the body."""
    if not request.get(CONTINUE_OWED):
        return
    request[CONTINUE_OWED] = False
    writer = request.writer
    await writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    writer.output_size = 0  # the answer's own size starts after it


async def close_unless_continued(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an answer given while ``100 Continue`` is still owed (the
    client holds its body back) closes the connection after it."""
    if request.get(CONTINUE_OWED):
        response.force_close()
        # The headers are prepared before this hook runs: say it in them too.
        response.headers["Connection"] = "close"
