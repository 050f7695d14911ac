"""``ADD <url>`` the way servers and networks behave: a download that stalls fails after
``READ_TIMEOUT`` without a byte, a slow but steady one has no limit on the whole, the
proxies the environment names are used (BuildKit uses its daemon's), and the download is
a step of its own in the progress, with its bytes."""

from __future__ import annotations

import asyncio
import http.server
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from builder.build import BuildOptions, Output, run_build
from builder.progress import BuildProgress
from builder.steps import download
from builder.steps.common import BuildError
from tests.helpers.http_server import serving

BODY = b"0123456789" * 10


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxied: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        if self.path.startswith("http://"):  # absolute form: asked as a proxy
            type(self).proxied.append(self.path)
            body = f"via the proxy for {self.path}\n".encode()
            self._head(len(body))
            self.wfile.write(body)
            return
        self._head(len(BODY))
        if self.path == "/stall":
            self.wfile.write(BODY[:10])
            self.wfile.flush()
            time.sleep(3)  # then the connection is closed unfinished
            return
        for i in range(0, len(BODY), 10):  # /slow: ten pieces, 0.15 s apart
            self.wfile.write(BODY[i:i + 10])
            self.wfile.flush()
            time.sleep(0.15)

    def _head(self, length: int) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.proxied = []
    with serving(_Handler) as url:
        yield url.removeprefix("http://")


def _context(tmp_path: Path, line: str) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(f"FROM scratch\n{line}\n")
    return ctx


def test_a_download_that_stalls_fails_naming_the_wait(build, tmp_path: Path, server: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "READ_TIMEOUT", 0.5)
    with pytest.raises(BuildError, match=r"no byte came for 0 s \(after 10 bytes\)"):
        build(_context(tmp_path, f"ADD http://{server}/stall /got"))


def test_a_slow_steady_download_is_not_cut_off(build, tmp_path: Path, server: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # 1.5 s in all, never 0.5 s without a byte
    monkeypatch.setattr(download, "READ_TIMEOUT", 0.5)
    out = tmp_path / "out"
    build(_context(tmp_path, f"ADD http://{server}/slow /got"), local=out)
    assert (out / "got").read_bytes() == BODY


def test_the_proxy_the_environment_names_is_used(build, tmp_path: Path, server: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # a name that resolves nowhere: only the proxy can answer for it
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://{server}")
    out = tmp_path / "out"
    build(_context(tmp_path, "ADD http://files.invalid/tool.txt /got/"), local=out)
    assert (out / "got/tool.txt").read_text() == "via the proxy for http://files.invalid/tool.txt\n"
    assert _Handler.proxied == ["http://files.invalid/tool.txt"]
    # loopback goes straight, as with Go's proxy rules (and the registry client's)
    build(_context(tmp_path, f"ADD http://{server}/slow /got/"), local=out)
    assert (out / "got/slow").read_bytes() == BODY
    assert _Handler.proxied == ["http://files.invalid/tool.txt"]


def test_the_download_is_a_step_with_its_bytes(tmp_path: Path, server: str) -> None:
    ctx = _context(tmp_path, f"ADD http://{server}/slow /got")
    shown = io.StringIO()
    opts = BuildOptions(context=ctx, storage=tmp_path / "s",
                        outputs=(Output("local", tmp_path / "out"),))
    asyncio.run(run_build(opts, BuildProgress("plain", out=shown)))
    lines = shown.getvalue().splitlines()
    url = f"http://{server}/slow"
    n = next(line.split()[0] for line in lines if line.endswith(f" {url}"))
    assert f"{n} slow 100 B / 100 B downloaded" in lines
    assert any(line.startswith(f"{n} DONE ") for line in lines)
