"""One structured (JSON) access-log line per request.

    {"ts":"2026-01-01T00:00:00.123Z","remote":"127.0.0.1","method":"GET",
     "path":"/v2/lib/app/manifests/latest","status":200,"bytes":1234,"ms":0.8,
     "user":"alice","agent":"docker/24.0"}

Lines go to a stream (stderr by default) through a buffer flushed every
:data:`FLUSH_SECONDS` and at shutdown: a write and flush per request through
:mod:`logging` would cost the registry more than a manifest GET itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from .state import BYTES_SENT, USER

__all__ = ["FLUSH_SECONDS", "AccessLogSink", "BadRequestFilter", "JsonAccessLogger"]

FLUSH_SECONDS = 0.5


class AccessLogSink:
    """Buffers lines and writes them to ``stream`` in batches."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._scheduled = False

    def add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= 1000:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
                self._scheduled = True
            except RuntimeError:  # no loop (shutdown): write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            lines, self._lines = self._lines, []
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


class JsonAccessLogger(AbstractAccessLogger):
    """aiohttp access logger writing JSON lines to :attr:`sink` (set before serving)."""

    sink: AccessLogSink | None = None

    def log(self, request: BaseRequest, response: StreamResponse, time_: float) -> None:
        sink = self.sink
        if sink is None:
            return
        now = time.time()
        sent = request.get(BYTES_SENT)
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z",
            "remote": request.remote,
            "method": request.method,
            "path": request.raw_path,
            "status": response.status,
            "bytes": sent if sent is not None else (response.content_length or 0),
            "ms": round(time_ * 1000, 3),
            "user": request.get(USER),
            "agent": request.headers.get("User-Agent"),
        }
        sink.add(json.dumps(record, separators=(",", ":")))

    @property
    def enabled(self) -> bool:
        return self.sink is not None


class BadRequestFilter(logging.Filter):
    """For aiohttp's server logger: a request it cannot parse (a byte it refuses in the
    path, two ``Content-Length`` headers, a header line without a colon) is logged by
    aiohttp as an ERROR with a traceback, though the client is at fault and has its 400
    (and its access-log line). This makes it one INFO line, ``bad request from ADDRESS:
    what``, so that a client cannot fill the log with stack traces."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 400) < 500:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.INFO):
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        record.levelno, record.levelname = logging.INFO, "INFO"
        what = " ".join(str(exc.message).split()).removesuffix(" ^")  # aiohttp's caret line
        record.msg, record.args = "bad request from %s: %s", (remote, what[:200])
        record.exc_info = record.exc_text = None
        return True
