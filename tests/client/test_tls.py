"""TLS: a registry with its own CA, trusted with --ca-cert (ClientOptions.ca_cert)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from registry.client.remote import ClientOptions, RegistryClient, TransportError
from registry.server import ServerConfig, make_app


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )
    return cert, key


async def test_ca_cert_is_trusted_and_unknown_ca_refused(aiohttp_server: Any, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "reg"), ssl=ctx)
    host = f"127.0.0.1:{server.port}"

    strict = {"loopback_insecure": False, "retries": 0}
    async with RegistryClient(ClientOptions(ca_cert=cert, **strict)) as client:  # type: ignore[arg-type]
        await client.ping(host)
        assert await client.base_url(host) == f"https://{host}"
    async with RegistryClient(ClientOptions(**strict)) as client:  # type: ignore[arg-type]
        with pytest.raises(TransportError, match="certificate"):
            await client.ping(host)
    async with RegistryClient(ClientOptions(tls_verify=False, **strict)) as client:  # type: ignore[arg-type]
        await client.ping(host)
    # Loopback is an insecure registry by default: TLS without verification, over HTTPS.
    async with RegistryClient() as client:
        await client.ping(host)
        assert await client.base_url(host) == f"https://{host}"


async def test_a_plain_http_registry_asked_over_tls_is_named_so_at_once_with_the_fix() -> None:
    # What Docker and skopeo say "server gave HTTP response to HTTPS client" for: it said
    # "[SSL: WRONG_VERSION_NUMBER] wrong version number (after 5 attempts); check that the
    # registry is running and reachable", after retrying what gets the same answer.
    connections = 0

    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read(1024)  # the ClientHello
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    host = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        # A loopback host is another host here (as a name elsewhere on the network is).
        async with RegistryClient(ClientOptions(loopback_insecure=False, backoff=0.01)) as client:
            with pytest.raises(TransportError, match=rf"^GET https://{host}/v2/: {host} does not speak TLS "
                                                     r"\(server gave HTTP response to HTTPS client\): it is a "
                                                     rf"plain-HTTP registry; allow that with --insecure {host} "):
                await client.ping(host)
    finally:
        server.close()
        await server.wait_closed()
    assert connections == 1
