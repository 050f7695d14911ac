"""A small HTTP server on 127.0.0.1, in a thread, for tests that download (ADD of a URL,
a build context from a URL)."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["Answer", "serve_answers", "serve_directory", "serving"]

# path -> (status, headers, body)
Answer = Callable[[str], tuple[int, dict[str, str], bytes]]


@contextlib.contextmanager
def serving(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` answering on a free 127.0.0.1 port, in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def serve_answers(answer: Answer) -> Iterator[str]:
    """Every GET answered by ``answer(path)``; yields the server's base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, headers, body = answer(self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        yield url


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """The files under ``root``; yields the server's base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    with serving(functools.partial(Quiet, directory=str(root))) as url:
        yield url
