"""The client through the HTTP proxies the environment names (HTTPS_PROXY, HTTP_PROXY,
NO_PROXY), as Docker, containerd and skopeo go through them: an https:// registry over a
CONNECT tunnel with TLS checked end to end, an http:// one in absolute form, credentials
in the proxy's URL, and what NO_PROXY and loopback keep straight."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.proxies import Proxies, ProxyError
from registry.client.remote import ClientOptions, RegistryClient, TransportError
from registry.server import ServerConfig, make_app

from .helpers import simple_image, store_image

NAME = "registry.invalid"  # resolves nowhere: only the proxy reaches it


class ForwardProxy:
    """A forward proxy on 127.0.0.1 that sends every connection to ``port`` there (as if
    it resolved every name to it): CONNECT is answered 200 and tunnelled, a request in
    absolute form is passed on in origin form (and its connection closed after the
    answer). ``auth``: the Proxy-Authorization it wants."""

    def __init__(self, port: int, auth: str | None = None) -> None:
        self.port, self.auth = port, auth
        self.seen: list[tuple[str, str, str | None]] = []  # method, target, auth
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            method, target, _ = line.split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (f.partition(":") for f in fields if f)}
            given = headers.get("proxy-authorization")
            self.seen.append((method, target, given))
            if self.auth is not None and given != self.auth:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic realm=\"proxy\"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:  # absolute form: passed on in origin form, one request per connection
                path = "/" + target.split("://", 1)[1].partition("/")[2]
                kept = [f for f in fields if f and f.split(":", 1)[0].strip().lower() not in
                        ("proxy-authorization", "proxy-connection", "connection")]
                up_writer.write("\r\n".join([f"{method} {path} HTTP/1.1", *kept,
                                              "Connection: close", "", ""]).encode("latin-1"))
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(1 << 16):
                if dst.is_closing():
                    return
                dst.write(data)
                await dst.drain()
        except ConnectionError:
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    return monkeypatch


@pytest.fixture
async def publisher(tmp_path: Path) -> AsyncIterator[ImageStore]:
    async with await ImageStore.open(tmp_path / "publisher") as images:
        yield images


def _cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={NAME}",
                    "-addext", f"subjectAltName=DNS:{NAME}"], check=True, capture_output=True)
    return cert, key


async def _roundtrip(host: str, publisher: ImageStore, images: ImageStore,
                     client: RegistryClient) -> None:
    image = simple_image(31, (200_000, 50_000))
    ref = f"{host}/through/proxy:1"
    await store_image(publisher, ref, image)
    await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), publisher, client,
                     Progress("quiet"), CopyOptions())
    result = await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                              client, Progress("quiet"), CopyOptions())
    assert result.digest == image.digest


async def test_an_https_registry_through_a_connect_tunnel_with_credentials(
    aiohttp_server: Any, tmp_path: Path, clean_env: pytest.MonkeyPatch, publisher: ImageStore,
    images: ImageStore,
) -> None:
    cert, key = _cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "reg"), ssl=ctx)
    auth = "Basic " + base64.b64encode(b"alice:p@ss word").decode()
    proxy = ForwardProxy(server.port, auth)
    clean_env.setenv("HTTPS_PROXY", f"http://alice:p%40ss%20word@{await proxy.start()}")
    host = f"{NAME}:{server.port}"
    try:
        async with RegistryClient(ClientOptions(ca_cert=cert, retries=0)) as client:
            await _roundtrip(host, publisher, images, client)
    finally:
        await proxy.close()
    assert proxy.seen and all(s == ("CONNECT", host, auth) for s in proxy.seen)


async def test_an_http_registry_through_the_proxy_in_absolute_form(
    aiohttp_server: Any, tmp_path: Path, clean_env: pytest.MonkeyPatch, publisher: ImageStore,
    images: ImageStore,
) -> None:
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "reg"))
    proxy = ForwardProxy(server.port)
    address = await proxy.start()
    clean_env.setenv("HTTP_PROXY", address)  # no scheme: http://, as Go takes it
    clean_env.setenv("HTTPS_PROXY", address)
    host = f"{NAME}:{server.port}"
    try:
        async with RegistryClient(ClientOptions(insecure=frozenset({host}), retries=0)) as client:
            await _roundtrip(host, publisher, images, client)
    finally:
        await proxy.close()
    plain = [target for method, target, _ in proxy.seen if method != "CONNECT"]
    assert plain and all(t.startswith(f"http://{host}/v2/") for t in plain)


async def test_no_proxy_and_loopback_go_straight(
    aiohttp_server: Any, tmp_path: Path, clean_env: pytest.MonkeyPatch,
) -> None:
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "reg"))
    clean_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    clean_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    async with RegistryClient(ClientOptions(retries=0)) as client:
        await client.ping(f"127.0.0.1:{server.port}")  # loopback: never proxied
    clean_env.setenv("NO_PROXY", f".example.com,{NAME}")
    async with RegistryClient(ClientOptions(retries=0)) as client:
        with pytest.raises(TransportError) as caught:
            await client.ping(f"{NAME}:{server.port}")  # straight: the name resolves nowhere
    assert "proxy" not in str(caught.value)


async def test_a_proxy_that_is_down_or_refuses_is_named(
    aiohttp_server: Any, tmp_path: Path, clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    async with RegistryClient(ClientOptions(retries=0)) as client:
        with pytest.raises(TransportError, match=r"cannot connect to the proxy 127\.0\.0\.1:9 "
                           rf"\(HTTPS_PROXY\) on the way to {NAME}:5000 .*list it in NO_PROXY"):
            await client.ping(f"{NAME}:5000")
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "reg"))
    proxy = ForwardProxy(server.port, auth="Basic bm9ib2R5Og==")
    clean_env.setenv("HTTPS_PROXY", f"http://{await proxy.start()}")
    try:
        async with RegistryClient(ClientOptions(retries=0)) as client:
            with pytest.raises(TransportError, match="407"):
                await client.ping(f"{NAME}:{server.port}")
    finally:
        await proxy.close()


@pytest.mark.parametrize(("no_proxy", "netloc", "proxied"), [
    ("", "registry.example.com", True),
    ("example.com", "registry.example.com", False),
    ("example.com", "example.com:443", False),
    (".example.com", "example.com", True),
    (".example.com", "a.example.com", False),
    ("example.com:5000", "example.com", True),
    ("example.com:5000", "example.com:5000", False),
    ("10.0.0.0/8", "10.1.2.3:5000", False),
    ("10.0.0.0/8", "11.1.2.3", True),
    ("192.168.1.5", "192.168.1.5", False),
    ("*", "anything.example", False),
    ("", "localhost:5000", False),
    ("", "127.0.0.2", False),
    ("", "[::1]:5000", False),
    (" Example.COM , other", "REGISTRY.example.com", False),
])
def test_which_hosts_no_proxy_keeps_straight(no_proxy: str, netloc: str, proxied: bool) -> None:
    proxies = Proxies({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": no_proxy})
    assert (proxies.for_url("https", netloc) is not None) is proxied


def test_which_variable_and_what_it_says() -> None:
    both = Proxies({"HTTPS_PROXY": "upper:1", "https_proxy": "lower:2", "http_proxy": "plain"})
    found = both.for_url("https", "r.example")
    assert found is not None and (found.netloc, found.variable) == ("upper:1", "HTTPS_PROXY")
    plain = both.for_url("http", "r.example")
    assert plain is not None and (plain.netloc, plain.authorization) == ("plain:80", None)
    assert Proxies({}).for_url("https", "r.example") is None
    with pytest.raises(ProxyError, match=r"socks5:// is not supported.*http://"):
        Proxies({"HTTPS_PROXY": "socks5://p:1080"}).for_url("https", "r.example")
    with pytest.raises(ProxyError, match="port is not a number"):
        Proxies({"HTTPS_PROXY": "http://p:x"}).for_url("https", "r.example")
