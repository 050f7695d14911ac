"""How upload bodies are taken in: the rule they must keep up with, and the upload slot
a large one waits for (:mod:`registry.server.uploads`, :mod:`registry.server.piece_uploads`).

A body must deliver ``PROGRESS`` bytes per ``http.body_timeout`` seconds: a trickle is as
stalled as silence. A body announced at most ``SMALL_BODY`` bytes skips the queue for
upload slots (``limits.UploadSlots``); a larger one, or one of unknown length, waits for a
slot, so the bodies taken in at once (and the memory they hold) stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web

from ..errors import BLOB_UPLOAD_INVALID, SIZE_INVALID, RegistryError
from .expect import send_continue
from .state import BYTES_RECEIVED, REGISTRY, Registry

__all__ = ["PROGRESS", "SMALL_BODY", "read_body", "upload_slot"]

# Bytes an upload body must deliver per http.body_timeout seconds.
PROGRESS = 64 << 10
# A body announced at most this large skips the queue for upload slots: its ingest
# never takes full-size buffers (manifests, configs, small layers, push plans).
SMALL_BODY = 1 << 20


def upload_slot(reg: Registry, request: web.Request) -> Any:
    """A slot (``limits.UploadSlots``) for a request that takes in a large body; the
    others wait, their bodies held back by TCP (and at most aiohttp's read buffer each)."""
    length = request.content_length
    if length is not None and length <= SMALL_BODY:
        return contextlib.nullcontext()
    return reg.upload_slots.hold(request.remote or "")


async def read_body(request: web.Request, limit: int, what: str) -> bytes:
    """The whole body, at most ``limit`` bytes; one that breaks off, or delivers less
    than 64 KiB in ``http.body_timeout`` seconds (a trickle is as stalled as silence, as
    for ordinary uploads), is BLOB_UPLOAD_INVALID."""
    length = request.content_length
    if length is not None and length > limit:
        raise BLOB_UPLOAD_INVALID(f"{what} is {length} bytes, over the limit of {limit}",
                                  detail={"limit": limit})
    reg = request.app[REGISTRY]
    stall = reg.config.http_body_timeout or None
    loop = asyncio.get_running_loop()
    buf = bytearray()
    await send_continue(request)
    try:
        # One deadline, pushed back each time PROGRESS more bytes came.
        async with asyncio.timeout(stall) as timer:
            mark = 0
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                if len(buf) + len(chunk) > limit:
                    raise BLOB_UPLOAD_INVALID(f"{what} is over the limit of {limit} bytes",
                                              detail={"limit": limit})
                buf += chunk
                if stall and len(buf) - mark >= PROGRESS:
                    mark = len(buf)
                    timer.reschedule(loop.time() + stall)
    except RegistryError:
        raise
    except TimeoutError as exc:
        reg.limit_log.hit("body_timeout", request.remote, seconds=stall, received=len(buf))
        raise BLOB_UPLOAD_INVALID(f"{what} sent less than {PROGRESS >> 10} KiB in {stall:g} s "
                                  f"(after {len(buf)} bytes)") from exc
    except Exception as exc:  # ConnectionResetError, aiohttp payload errors
        exc.__traceback__ = None  # see uploads._pump: the reader's frame would keep the body
        raise BLOB_UPLOAD_INVALID(f"{what} broke off after {len(buf)} bytes: {exc}") from exc
    finally:
        request[BYTES_RECEIVED] = request.get(BYTES_RECEIVED, 0) + len(buf)
    if length is not None and len(buf) != length:
        raise SIZE_INVALID(f"{what} was {len(buf)} bytes, Content-Length said {length}")
    return bytes(buf)
