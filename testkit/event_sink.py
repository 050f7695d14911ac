"""An HTTP endpoint for registry notifications, on 127.0.0.1, in a thread of its own.

``EventSink`` records every envelope POSTed to it (``{"events": [...]}``, CNCF
Distribution's format) with the request's headers. It can answer 503 (``failing``) or hold
requests without answering (``blocked``), to play an endpoint that is down or slow. Its
own event loop runs in a thread, so a test may run blocking clients (docker, skopeo)
while events arrive.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .registries import free_port

__all__ = ["EventSink", "ReceivedEnvelope"]


@dataclass(frozen=True)
class ReceivedEnvelope:
    """One POST: its headers (names as sent) and the decoded JSON body."""

    headers: dict[str, str]
    body: dict[str, Any]


class EventSink:
    """``start()`` on ``port`` (a free one by default), ``stop()``; a context manager."""

    def __init__(self, port: int | None = None, path: str = "/events") -> None:
        self.port = port or free_port()
        self.path = path
        self.failing = False
        self.blocked = threading.Event()
        self.blocked_requests = 0  # requests being held now
        self._lock = threading.Lock()
        self._received: list[ReceivedEnvelope] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def envelopes(self) -> list[ReceivedEnvelope]:
        with self._lock:
            return list(self._received)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for env in self.envelopes for e in env.body.get("events", [])]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        deadline = time.monotonic() + 120
        if self.blocked.is_set():
            with self._lock:
                self.blocked_requests += 1
            try:
                # A threading.Event, set and cleared from the test's thread: polled.
                while self.blocked.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            finally:
                with self._lock:
                    self.blocked_requests -= 1
        if self.failing:
            return web.Response(status=503, text="down for maintenance")
        with self._lock:
            self._received.append(ReceivedEnvelope(dict(request.headers), json.loads(body)))
        return web.Response(status=200)

    async def _serve(self, ready: threading.Event) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self) -> EventSink:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        loop = self._loop
        self._thread = threading.Thread(
            target=lambda: loop.run_until_complete(self._serve(ready)), daemon=True, name="event-sink"
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"the event sink did not start on 127.0.0.1:{self.port}")
        return self

    def stop(self) -> None:
        self.blocked.clear()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._loop is not None:
            self._loop.close()
        self._loop = self._thread = self._stop = None

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30
    ) -> list[dict[str, Any]]:
        """Wait until ``predicate(events)`` holds; return the events (AssertionError on
        timeout, listing what did arrive)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events
            if predicate(events):
                return events
            time.sleep(0.05)
        summary = [(e.get("action"), e.get("target", {}).get("mediaType"), e.get("target", {}).get("tag"))
                   for e in self.events]
        raise AssertionError(f"the expected events did not arrive within {timeout:.0f} s; got {summary}")

    async def wait_for_async(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 30  # noqa: ASYNC109
    ) -> list[dict[str, Any]]:
        """:meth:`wait_for` for a test whose event loop runs the registry too."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events
            if predicate(events):
                return events
            await asyncio.sleep(0.05)
        return self.wait_for(predicate, timeout=0)

    def __enter__(self) -> EventSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
