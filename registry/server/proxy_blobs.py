"""A blob on its way from an upstream registry to the store, served while it arrives.

The pull-through cache (:mod:`registry.server.proxy`) reads an upstream blob once
(:func:`receive_blob`). The store's receiver thread reads its bytes into a ``cas`` ingest
and, as they arrive, copies them into a *spool*: an unnamed temporary file next to the
store. Clients that ask for the blob meanwhile (a plain GET) get a 200
at once and stream from the spool as far as it has come, so the first client does not
wait for the whole transfer. The last byte is sent only once the ingest has committed,
that is after the digest and length were verified: a client never receives a complete
body that is wrong. If the transfer or the verification fails, the connections of those
clients are cut (they see a short body and retry); nothing is kept. A body that stops
arriving fails the transfer (:func:`registry.server.proxy_upstream.watch_stall`).

The spool file is closed when the transfer and every client reading it are done.
Requests with ``Range`` or ``If-None-Match``, and HEADs, wait for the store instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from cas import Digest, SourceFailed

from ..client.remote import RegistryClient
from .proxy_upstream import UpstreamStalled, stalled
from .stalls import cut_off_when_stalled
from .state import BYTES_SENT, BlobStore

__all__ = ["BlobFlight", "held_locally", "receive_blob", "stream_flight", "streamable"]

_CHUNK = 1 << 20  # bytes per read from the spool
_SLICE = 8 << 20  # bytes received from upstream per call into the store


class BlobFlight:
    """The state of one upstream transfer, shared by the fetch and its readers.

    States: ``waiting`` (no answer from upstream yet) -> ``receiving`` -> ``committed``
    or ``failed``. ``size`` is the upstream's Content-Length (None: unknown, nobody
    streams). Everything but :meth:`spool_write` runs on the event loop.
    """

    def __init__(self, spool_dir: Path | None) -> None:
        self.size: int | None = None
        self.received = 0
        self.state = "waiting"
        self.started = asyncio.Event()  # set once the upstream answered, or it failed
        self._spool_dir = spool_dir
        self._file: IO[bytes] | None = None
        self._users = 1  # the fetch itself, plus one per reader
        self._changed = asyncio.Event()

    # --- the fetch -------------------------------------------------------------------
    def open_spool(self, size: int | None) -> None:
        self._file = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115 - see release
        self.size = size
        self.state = "receiving"
        self.started.set()
        self._notify()

    def spool_write(self, data: memoryview, offset: int) -> None:
        """Write received bytes to the spool (on the fetch's worker thread)."""
        assert self._file is not None
        os.pwrite(self._file.fileno(), data, offset)

    def advanced(self, n: int) -> None:
        self.received += n
        self._notify()

    def finish(self, ok: bool) -> None:
        """The transfer ended: committed to the store, or failed."""
        self.state = "committed" if ok else "failed"
        self.started.set()
        self._notify()
        self.release()

    # --- readers ---------------------------------------------------------------------
    def join(self) -> bool:
        """Become a reader of the spool; False if there is none to read."""
        if self._file is None or self.size is None or self.state == "failed":
            return False
        self._users += 1
        return True

    def release(self) -> None:
        self._users -= 1
        if self._users == 0 and self._file is not None:
            self._file.close()
            self._file = None

    def readable(self) -> int:
        """How far readers may go: the last byte only after the verified commit."""
        assert self.size is not None
        if self.state == "committed":
            return self.size
        return min(self.received, max(self.size - 1, 0))

    async def read(self, pos: int, n: int) -> bytes:
        assert self._file is not None  # a reader holds it open
        return await asyncio.to_thread(os.pread, self._file.fileno(), n, pos)

    async def changed(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()


async def receive_blob(client: RegistryClient, store: BlobStore, host: str, name: str,
                       digest: Digest, flight: BlobFlight, link: str) -> None:
    """GET blob ``digest`` of ``name`` from ``host`` into ``store``, spooling it for
    ``flight``'s readers; commit it (verified: digest and declared length) linked to
    ``link``. On any failure nothing is kept; the caller ends ``flight``.

    The store's receiver thread reads the body straight into the cutter's buffer and
    hashes, cuts and stores it there; each read is spooled on the way. One byte more
    than the declared length is asked for, so that a longer body fails the commit
    instead of being cut short."""
    async with client.open_blob(host, name, digest) as resp:
        size = resp.length
        flight.open_spool(size)
        ingest = await store.begin_ingest(algorithm=digest.algorithm)
        fill = _Spooler(resp, flight, asyncio.get_running_loop())
        try:
            try:
                while True:
                    want = _SLICE if size is None else min(_SLICE, size + 1 - ingest.offset)
                    if want <= 0:
                        break
                    if await ingest.receive(fill, want, interrupt=resp.abort) < want:
                        break
            except SourceFailed as exc:
                if stalled(exc):
                    raise UpstreamStalled(
                        f"blob {digest} from {host}: no byte arrived for "
                        f"{client.options.read_timeout:g} s after byte {fill.offset}; the "
                        "transfer was given up") from exc
                raise
            await ingest.commit(digest, size=size, link=link)
        except BaseException:
            with contextlib.suppress(Exception):
                await ingest.abort()
            raise


class _Spooler:
    """The source of the store's receive: reads what has arrived of the body into the
    store's buffer and copies it to the flight's spool (on the receiver thread), then
    tells the event loop how far the spool goes."""

    def __init__(self, resp: Any, flight: BlobFlight, loop: asyncio.AbstractEventLoop) -> None:
        self._resp = resp
        self._flight = flight
        self._loop = loop
        self.offset = 0  # bytes received (also read by the stall watch on the event loop)
        self._told = 0  # of which the flight has been told
        self._telling = False  # a _tell is queued on the event loop

    def __call__(self, view: memoryview) -> int:
        # What one read of the connection brings, not a full view: readers get bytes as
        # they arrive, and a slow body shows as progress to the stall watch.
        n: int = self._resp.readsome(view)
        if n:
            self._flight.spool_write(view[:n], self.offset)
            self.offset += n
            if not self._telling:  # one queued at a time: fast reads are told together
                self._telling = True
                self._loop.call_soon_threadsafe(self._tell)
        return n

    def _tell(self) -> None:
        self._telling = False
        offset = self.offset
        if offset > self._told:
            self._flight.advanced(offset - self._told)
            self._told = offset


def streamable(request: web.Request) -> bool:
    """Whether a blob request can be answered from a transfer in progress."""
    return (request.method == "GET" and "Range" not in request.headers
            and "If-None-Match" not in request.headers)


async def stream_flight(
    request: web.Request, flight: BlobFlight, digest: Digest
) -> web.StreamResponse:
    """Answer a GET from ``flight``'s spool (the caller has joined it; this releases it)."""
    try:
        size = flight.size
        assert size is not None
        headers = {
            "Docker-Content-Digest": str(digest),
            "ETag": f'"{digest}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Docker-Distribution-API-Version": "registry/2.0",
        }
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = size
        await resp.prepare(request)
        pos = 0
        async with cut_off_when_stalled(request):  # a client that stopped reading
            while pos < size:
                if flight.state == "failed":
                    # The status line is gone: cutting the connection is all that is left.
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                limit = flight.readable()
                if pos >= limit:
                    await flight.changed()  # every change wakes us; the transfer always ends
                    continue
                data = await flight.read(pos, min(limit - pos, _CHUNK))
                if not data:
                    if request.transport is not None:
                        request.transport.close()
                    return resp
                await resp.write(data)
                pos += len(data)
                request[BYTES_SENT] = pos
        await resp.write_eof()
        return resp
    finally:
        flight.release()


async def held_locally(store: BlobStore, holder: str, digest: Digest) -> bool:
    """Whether ``holder`` holds the blob now; the store's same bytes kept for another
    repository are linked to it (no transfer)."""
    if await store.is_linked(holder, digest):
        return True
    if await store.stat(digest) is not None:
        await store.link(holder, digest)
        return True
    return False
