"""Per-registry certificate directories (``certs.d/<host:port>/``, ``--cert-dir``) as Docker
and podman read them, and what the client says when a certificate is not accepted."""

from __future__ import annotations

import contextlib
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from registry.client.certs_dirs import CertsDirError
from registry.client.remote import ClientOptions, RegistryClient, TransportError
from registry.server import ServerConfig, make_app
from tests.helpers.pki import Authority, Issued

STRICT: dict[str, Any] = {"loopback_insecure": False, "retries": 1, "backoff": 0.01}


def _context(server: Issued, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(server.cert, server.key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def _serve(aiohttp_server: Any, tmp_path: Path, ctx: ssl.SSLContext) -> str:
    server = await aiohttp_server(make_app(ServerConfig(), storage=tmp_path / "reg"), ssl=ctx)
    return f"127.0.0.1:{server.port}"


async def _ping(host: str, **options: Any) -> None:
    async with RegistryClient(ClientOptions(**{**STRICT, **options})) as client:
        await client.ping(host)


async def test_the_ca_in_the_hosts_certs_d_directory_is_trusted_chain_and_all(
        aiohttp_server: Any, tmp_path: Path) -> None:
    root = Authority(tmp_path)
    server = root.intermediate().issue("server")  # the file holds the intermediate after it
    host = await _serve(aiohttp_server, tmp_path, _context(server))
    docker, containers = tmp_path / "docker-certs.d", tmp_path / "containers-certs.d"
    (docker / host).mkdir(parents=True)
    shutil.copy(root.file, docker / host / "ca.crt")

    await _ping(host, certs_d=(containers, docker))
    # The first root with a directory for the host wins; the others are not read (as
    # containers/image does): an empty one there hides Docker's.
    (containers / host).mkdir(parents=True)
    with pytest.raises(TransportError, match="signed by an unknown authority"):
        await _ping(host, certs_d=(containers, docker))
    # Another host's directory is not this one's.
    with pytest.raises(TransportError, match="signed by an unknown authority"):
        await _ping(host, certs_d=(tmp_path / "none", docker / "x"))


async def test_a_client_certificate_from_certs_d_is_presented_even_to_an_insecure_registry(
        aiohttp_server: Any, tmp_path: Path) -> None:
    root = Authority(tmp_path)
    host = await _serve(aiohttp_server, tmp_path, _context(root.issue("server"), client_ca=root.file))
    certs = tmp_path / "certs.d" / host
    certs.mkdir(parents=True)
    client = root.issue("client", ("ci-runner",), client=True)
    shutil.copy(client.cert, certs / "client.cert")
    shutil.copy(client.key, certs / "client.key")
    shutil.copy(root.file, certs / "ca.crt")

    await _ping(host, certs_d=(tmp_path / "certs.d",))
    # Loopback is an insecure registry: its certificate is not checked, but the client's
    # own is still presented (as podman and skopeo do).
    async with RegistryClient(ClientOptions(certs_d=(tmp_path / "certs.d",), retries=0)) as reg:
        await reg.ping(host)
        assert await reg.base_url(host) == f"https://{host}"
    # --cert-dir: one directory, whatever the host.
    await _ping(host, cert_dir=certs, certs_d=())


@pytest.mark.parametrize(("files", "message"), [
    (("client.cert",), r"client\.cert: client certificate without its key client\.key beside it"),
    (("client.key",), r"client\.key: key without its client certificate client\.cert beside it"),
])
async def test_a_half_client_pair_is_named_with_the_fix(tmp_path: Path, files: tuple[str, ...],
                                                        message: str) -> None:
    certs = tmp_path / "certs.d" / "registry.example:5000"
    certs.mkdir(parents=True)
    for name in files:
        (certs / name).write_text("")
    with pytest.raises(CertsDirError, match=message):
        await _ping("registry.example:5000", certs_d=(tmp_path / "certs.d",))


async def test_untrusted_expired_and_wrong_name_certificates_say_what_and_which_file(
        aiohttp_server: Any, tmp_path: Path) -> None:
    # They said "[SSL: CERTIFICATE_VERIFY_FAILED] ... (after 5 attempts); check that the
    # registry is running and reachable", after retrying what gets the same answer.
    root = Authority(tmp_path)
    for server, options, message in [
        (root.issue("plain"), {},
         r"the TLS certificate of {host} is signed by an unknown authority \(.*\): trust the registry's "
         r"CA: put its certificate as ca\.crt in /etc/docker/certs\.d/{host}/ \(or "
         r"/etc/containers/certs\.d/{host}/.*or give --ca-cert FILE"),
        (root.issue("expired", expired=True), {"ca_cert": root.file},
         r"the TLS certificate of {host} has expired \(certificate has expired\): renew"),
        (root.issue("other", ("registry.example",)), {"ca_cert": root.file},
         r"the TLS certificate of {host} is not valid for 127\.0\.0\.1 \(.*\): reissue it with "
         r"127\.0\.0\.1 in its subjectAltName"),
    ]:
        host = await _serve(aiohttp_server, tmp_path, _context(server))
        with pytest.raises(TransportError, match=message.format(host=host)) as caught:
            await _ping(host, certs_d=(), **options)
        assert "attempts" not in str(caught.value)


async def test_a_registry_that_closes_tls_without_a_client_certificate_says_where_one_goes(
        aiohttp_server: Any, tmp_path: Path) -> None:
    # A registry on asyncio's own TLS (this test server) cannot send the TLS alert: with TLS 1.3 it closes the
    # connection at the first request. It said "GET http://HOST/v2/: Remote end closed
    # connection without response (after 5 attempts); check that the registry is running":
    # the loopback registry was asked over plain HTTP after that, which it does not speak.
    root = Authority(tmp_path)
    host = await _serve(aiohttp_server, tmp_path, _context(root.issue("server"), client_ca=root.file))
    async with RegistryClient(ClientOptions(certs_d=(), retries=1, backoff=0.01)) as client:
        with pytest.raises(TransportError, match=rf"^GET https://{host}/v2/: {host} closed the TLS connection "
                                                 r"without an answer: a registry that wants a TLS client "
                                                 r"certificate \(http\.tls\.clientcas\) does that .* as "
                                                 rf"client\.cert and client\.key in /etc/docker/certs\.d/{host}/"):
            await client.ping(host)


@contextlib.asynccontextmanager
async def _plain_http_registry() -> AsyncIterator[str]:
    async def v2(_request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v2/", v2)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_tls_verify_false_allows_plain_http_as_podman_takes_it() -> None:
    # `podman push --tls-verify=false reg:5000/img` to a plain-HTTP registry works; pybuild
    # said "reg:5000 does not speak TLS ...: allow that with --insecure reg:5000".
    async with _plain_http_registry() as host, RegistryClient(ClientOptions(tls_verify=False, **STRICT)) as client:
        await client.ping(host)
        assert await client.base_url(host) == f"http://{host}"


@pytest.mark.parametrize("written", ["http://{host}", "https://{host}/"])
async def test_an_insecure_host_written_with_its_scheme_counts_as_docker_takes_it(written: str) -> None:
    # Docker's insecure-registries drops an http:// or https://; --insecure http://reg:5000
    # was silently of no effect.
    async with _plain_http_registry() as host:
        insecure = frozenset({written.format(host=host)})
        async with RegistryClient(ClientOptions(insecure=insecure, **STRICT)) as client:
            await client.ping(host)
            assert await client.base_url(host) == f"http://{host}"
