"""``pybuild serve`` TLS as teams deploy it: a chain file, client certificates
(Distribution's ``http.tls.clientcas``), ``http.tls.minimumtls``, and a certificate and
key that do not go together refused at start with the file at fault."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from registry.client.remote import ClientOptions, RegistryClient, TransportError
from registry.server import load_config, make_app
from registry.server.tls import server_context
from tests.helpers.pki import Authority

ROOT = Path(__file__).resolve().parents[2]


def _serve_fails(tmp_path: Path, *args: str, config: str | None = None) -> str:
    """The error ``pybuild serve`` stops with (it must not start)."""
    extra = []
    if config is not None:
        (tmp_path / "config.yml").write_text(config)
        extra = ["--config", str(tmp_path / "config.yml")]
    result = subprocess.run(
        [sys.executable, "-m", "builder", "serve", "--addr", "127.0.0.1:0", *extra, *args],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYBUILD_STORAGE": str(tmp_path / "storage")},
    )
    assert result.returncode != 0, result.stderr
    return " ".join(result.stderr.split())


def test_a_key_that_is_not_the_certificates_is_refused_at_start_naming_both(tmp_path: Path) -> None:
    # It said "cannot serve: [X509: KEY_VALUES_MISMATCH] key values mismatch (_ssl.c:3926)",
    # and "[SSL] PEM lib (_ssl.c:3905)" for a certificate and key given the wrong way round.
    root = Authority(tmp_path)
    server, other = root.issue("server"), root.issue("other")
    said = _serve_fails(tmp_path, "--tls-cert", str(server.cert), "--tls-key", str(other.key))
    assert f"TLS key {other.key} is not the key of the certificate {server.cert}" in said
    said = _serve_fails(tmp_path, "--tls-cert", str(server.key), "--tls-key", str(server.cert))
    assert f"TLS certificate {server.key} holds no PEM certificate" in said


def test_an_encrypted_key_is_refused_without_asking_for_its_pass_phrase(tmp_path: Path) -> None:
    root = Authority(tmp_path)
    server = root.issue("server")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(server.key), "-aes256", "-passout", "pass:secret",
                    "-out", str(encrypted)], check=True, capture_output=True)
    said = _serve_fails(tmp_path, "--tls-cert", str(server.cert), "--tls-key", str(encrypted))
    assert f"TLS key {encrypted} is encrypted: give it decrypted" in said


def _distribution_config(tmp_path: Path, tls: str) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {tmp_path / 'reg'}}}}}\n"
                    f"http: {{addr: 127.0.0.1:0, tls: {tls}}}\n")
    return path


async def test_clientcas_requires_a_client_certificate_signed_by_them(aiohttp_server: Any, tmp_path: Path) -> None:
    # Distribution's http.tls.clientcas was refused ("remove it and check client
    # certificates in a reverse proxy in front").
    root = Authority(tmp_path)
    clients = Authority(tmp_path, "Client CA")
    server = root.intermediate().issue("server")
    config = load_config(_distribution_config(
        tmp_path, f"{{certificate: {server.cert}, key: {server.key}, clientcas: [{clients.file}]}}"), environ={})
    assert config.tls_clientcas == (clients.file,)
    assert config.tls_cert is not None and config.tls_key is not None
    ctx = server_context(config.tls_cert, config.tls_key, config.tls_clientcas, config.tls_minimum)
    srv = await aiohttp_server(make_app(config, storage=tmp_path / "reg"), ssl=ctx)
    host = f"127.0.0.1:{srv.port}"

    certs_d = tmp_path / "certs.d"
    (certs_d / host).mkdir(parents=True)
    shutil.copy(root.file, certs_d / host / "ca.crt")
    strict = {"loopback_insecure": False, "retries": 0, "certs_d": (certs_d,)}
    async with RegistryClient(ClientOptions(**strict)) as client:  # type: ignore[arg-type]
        with pytest.raises(TransportError):
            await client.ping(host)
    stranger = root.issue("stranger", ("ci",), client=True)  # signed by another CA than clientcas
    shutil.copy(stranger.cert, certs_d / host / "client.cert")
    shutil.copy(stranger.key, certs_d / host / "client.key")
    async with RegistryClient(ClientOptions(**strict)) as client:  # type: ignore[arg-type]
        with pytest.raises(TransportError):
            await client.ping(host)
    member = clients.issue("member", ("ci",), client=True)
    shutil.copy(member.cert, certs_d / host / "client.cert")
    shutil.copy(member.key, certs_d / host / "client.key")
    async with RegistryClient(ClientOptions(**strict)) as client:  # type: ignore[arg-type]
        await client.ping(host)


async def test_minimumtls_tls13_refuses_tls12_clients(aiohttp_server: Any, tmp_path: Path) -> None:
    root = Authority(tmp_path)
    server = root.issue("server")
    config = load_config(_distribution_config(
        tmp_path, f"{{certificate: {server.cert}, key: {server.key}, minimumtls: tls1.3}}"), environ={})
    assert config.tls_minimum == "tls1.3"
    assert config.tls_cert is not None and config.tls_key is not None
    ctx = server_context(config.tls_cert, config.tls_key, config.tls_clientcas, config.tls_minimum)
    srv = await aiohttp_server(make_app(config, storage=tmp_path / "reg"), ssl=ctx)
    tls12 = ssl.create_default_context(cafile=root.file)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionResetError)):  # no handshake: refused
        await _handshake(srv.port, tls12)
    await _handshake(srv.port, ssl.create_default_context(cafile=root.file))


async def _handshake(port: int, ctx: ssl.SSLContext) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.close()
    await writer.wait_closed()


def test_minimumtls_older_than_tls12_is_refused_by_name(tmp_path: Path) -> None:
    said = _serve_fails(tmp_path, config="version: 0.1\nhttp: {tls: {certificate: /c, key: /k, "
                                         "minimumtls: tls1.0}}\n")
    assert "minimum: pybuild accepts tls1.2 or tls1.3 (TLS 1.0 and 1.1 are broken), got 'tls1.0'" in said
