"""``pybuild serve`` over TLS, at the edges where Go's net/http (Distribution) says what is
wrong: plain HTTP sent to the TLS port, a client certificate missing or refused, and a
connection that never finishes its handshake. Each runs on both event loops serve uses."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.client.remote import ClientOptions, RegistryClient, TransportError
from registry.server.limits import ConnectionGuard, LimitLog
from registry.server.tls_accept import PLAIN_HTTP_ANSWER
from tests.helpers.pki import Authority, Issued

from .helpers import start_serve

ROOT = Path(__file__).resolve().parents[2]
LOOPS = ["asyncio", "uvloop"]


class Served:
    def __init__(self, port: int, root: Authority, clients: Authority) -> None:
        self.port = port
        self.root = root
        self.clients = clients

    def context(self, client: Issued | None = None, tls12: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.root.file)
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if client is not None:
            ctx.load_cert_chain(client.cert, client.key)
        return ctx

    def get_v2(self, ctx: ssl.SSLContext, source: str = "127.0.0.1") -> bytes:
        """The answer to GET /v2/ over TLS with ``ctx``, from the address ``source``."""
        with _connect(self.port, source) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n")
            return _read_all(conn)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` (hostile clients take addresses of their own in
    127.0.0.0/8, so that the limits per client tell them from a well-behaved one)."""
    conn = socket.socket()
    try:
        conn.bind((source, 0))
        conn.settimeout(10)
        conn.connect(("127.0.0.1", port))
    except BaseException:
        conn.close()
        raise
    return conn


def _read_all(conn: socket.socket) -> bytes:
    answer = b""
    while chunk := conn.recv(65536):
        answer += chunk
    return answer


def _serve(tmp_path: Path, loop: str, *, clientcas: bool = False, header_timeout: float = 20,
           minimum: str = "tls1.2", per_client: int = 256, in_all: int = 4096) -> Iterator[Served]:
    root, clients = Authority(tmp_path), Authority(tmp_path, "Client CA")
    server = root.issue("server")
    cas = f", clientcas: [{clients.file}]" if clientcas else ""
    cas += f", minimum: {minimum}"
    config = tmp_path / "config.yml"
    config.write_text(f"tls: {{cert: {server.cert}, key: {server.key}{cas}}}\n"
                      f"http: {{header_timeout: {header_timeout}, max_connections_per_client: {per_client},"
                      f" max_connections: {in_all}}}\n")
    log = tmp_path / "serve.log"
    proc, url = start_serve(["--addr", "127.0.0.1:0", "--config", str(config), "--storage",
                             str(tmp_path / "storage"), "--event-loop", loop], log)
    try:
        yield Served(int(url.split()[0].rsplit(":", 1)[1]), root, clients)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(params=LOOPS)
def tls_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, request.param, clientcas=False, header_timeout=2)


@pytest.fixture(params=LOOPS)
def mtls_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    yield from _serve(tmp_path, request.param, clientcas=True)


@pytest.mark.parametrize("request_head", [
    b"GET /v2/ HTTP/1.1\r\nHost: registry\r\n\r\n",
    b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: registry\r\nContent-Length: 5\r\n\r\nhello",
])
def test_plain_http_to_the_tls_port_is_told_so_as_go_does(tls_registry: Served, request_head: bytes) -> None:
    # It got an empty reply (curl: "Empty reply from server", docker: "EOF").
    with socket.create_connection(("127.0.0.1", tls_registry.port), timeout=10) as conn:
        conn.sendall(request_head)
        assert _read_all(conn) == PLAIN_HTTP_ANSWER
    assert PLAIN_HTTP_ANSWER.endswith(b"\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
    # TLS on the same port goes on as before.
    assert tls_registry.get_v2(tls_registry.context()).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01"])
def test_a_connection_that_does_not_finish_its_handshake_gets_the_header_timeout(
        tls_registry: Served, sent: bytes) -> None:
    # Nothing, or a handshake cut short, was closed after asyncio's 60 s handshake timeout:
    # http.header_timeout (here 2 s) did not apply before the handshake was done.
    with socket.create_connection(("127.0.0.1", tls_registry.port), timeout=15) as conn:
        conn.sendall(sent)
        start = time.monotonic()
        assert conn.recv(1) == b""
        assert 1.5 < time.monotonic() - start < 10


def test_a_missing_client_certificate_gets_the_alert_that_says_so(mtls_registry: Served) -> None:
    # The connection was closed without an alert: clients said "EOF" (skopeo, docker) or
    # "unexpected eof while reading"; Go's says "bad certificate", OpenSSL's "certificate required".
    with pytest.raises(ssl.SSLError) as caught:
        mtls_registry.get_v2(mtls_registry.context())
    assert caught.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    with pytest.raises(ssl.SSLError) as caught:
        mtls_registry.get_v2(mtls_registry.context(tls12=True))
    assert caught.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_without_the_minimum_tls_version_gets_the_alert_that_says_so(tmp_path: Path, loop: str) -> None:
    for served in _serve(tmp_path, loop, minimum="tls1.3"):
        with pytest.raises(ssl.SSLError) as caught:
            served.get_v2(served.context(tls12=True))
        assert caught.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
        assert served.get_v2(served.context()).startswith(b"HTTP/1.1 200")


def test_a_client_certificate_of_another_ca_gets_the_alert_that_says_so(mtls_registry: Served) -> None:
    stranger = mtls_registry.root.issue("stranger", ("ci",), client=True)
    for tls12 in (False, True):
        with pytest.raises(ssl.SSLError) as caught:
            mtls_registry.get_v2(mtls_registry.context(stranger, tls12=tls12))
        assert caught.value.reason == "TLSV1_ALERT_UNKNOWN_CA"
    member = mtls_registry.clients.issue("member", ("ci",), client=True)
    assert mtls_registry.get_v2(mtls_registry.context(member)).startswith(b"HTTP/1.1 200")


async def test_pybuild_says_which_client_certificate_was_refused(mtls_registry: Served, tmp_path: Path) -> None:
    # It said the registry "closed the TLS connection without an answer"; a certificate
    # it refused was said to be none at all.
    host = f"127.0.0.1:{mtls_registry.port}"
    certs_d = tmp_path / "certs.d"
    (certs_d / host).mkdir(parents=True)
    (certs_d / host / "ca.crt").write_bytes(mtls_registry.root.file.read_bytes())
    options = ClientOptions(loopback_insecure=False, retries=0, certs_d=(certs_d,))
    async with RegistryClient(options) as client:
        with pytest.raises(TransportError, match=rf"{host} wants a TLS client certificate that it accepts, "
                                                 r"and got none \(TLSV13_ALERT_CERTIFICATE_REQUIRED\): put "):
            await client.ping(host)
    stranger = mtls_registry.root.issue("stranger", ("ci",), client=True)
    (certs_d / host / "client.cert").write_bytes(stranger.cert.read_bytes())
    (certs_d / host / "client.key").write_bytes(stranger.key.read_bytes())
    async with RegistryClient(options) as client:
        with pytest.raises(TransportError, match=rf"{host} refused the TLS client certificate it was given: "
                                                 r"no CA it trusts signed it \(TLSV1_ALERT_UNKNOWN_CA\): put "):
            await client.ping(host)


def _half_handshake(port: int, source: str) -> socket.socket:
    """A connection that starts a TLS handshake and never finishes it."""
    conn = _connect(port, source)
    conn.sendall(b"\x16\x03\x01")
    return conn


def _closed_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``conn`` within ``seconds``."""
    conn.settimeout(seconds)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def _open(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        return conn.recv(1) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False


@pytest.mark.parametrize("loop", LOOPS)
def test_connections_in_their_handshake_count_in_the_connection_limits(tmp_path: Path, loop: str) -> None:
    # Only a connection whose handshake was done counted: one client held any number of
    # connections in their handshakes (each up to http.header_timeout), and its next
    # connection was served all the same.
    for served in _serve(tmp_path, loop, per_client=4, in_all=8):
        ctx = served.context()
        within = [_half_handshake(served.port, "127.0.0.2") for _ in range(4)]
        beyond = [_half_handshake(served.port, "127.0.0.2") for _ in range(20)]
        # Refused: closed once they had a short while to finish their handshakes.
        started = time.monotonic()
        assert all(_closed_within(conn, 10) for conn in beyond)
        assert time.monotonic() - started < 6
        assert all(_open(conn) for conn in within)  # they have up to http.header_timeout
        # A handshake over the limit that does finish is told why, as over plain HTTP.
        refused = served.get_v2(ctx, "127.0.0.2")
        assert refused.startswith(b"HTTP/1.1 429") and b"TOOMANYREQUESTS" in refused, refused
        # A well-behaved client is still served.
        assert served.get_v2(ctx).startswith(b"HTTP/1.1 200")
        # In all: four more from elsewhere fill the total, and nobody else gets in.
        others = [_half_handshake(served.port, "127.0.0.3") for _ in range(4)]
        _answered_within(served, ctx, "127.0.0.1", b"HTTP/1.1 429", 10)
        for conn in within + beyond + others:
            conn.close()
        _answered_within(served, ctx, "127.0.0.1", b"HTTP/1.1 200", 10)


def _answered_within(served: Served, ctx: ssl.SSLContext, source: str, status: bytes, seconds: float) -> None:
    """GET /v2/ from ``source`` until the answer starts with ``status`` (a connection
    closed just now may still hold its place for a moment)."""
    deadline = time.monotonic() + seconds
    while not (answer := served.get_v2(ctx, source)).startswith(status):
        assert time.monotonic() < deadline, answer
        time.sleep(0.05)


@pytest.mark.parametrize("loop", LOOPS)
def test_handshakes_that_fail_or_time_out_give_their_places_back(tmp_path: Path, loop: str) -> None:
    for served in _serve(tmp_path, loop, header_timeout=1, per_client=4):
        ctx = served.context()
        hello = ssl.MemoryBIO()
        try:
            ctx.wrap_bio(ssl.MemoryBIO(), hello, server_hostname="127.0.0.1").do_handshake()
        except ssl.SSLWantReadError:
            pass
        client_hello = hello.read()
        for _ in range(10):
            for sent in (b"", b"\x16\x03\x01\x00\x05hello", b"GET / HTTP/1.1\r\n\r\n", client_hello):
                with _connect(served.port, "127.0.0.2") as conn:
                    conn.sendall(sent)
            with _connect(served.port, "127.0.0.2") as raw:  # a finished handshake, no request
                ctx.wrap_socket(raw, server_hostname="127.0.0.1").close()
        stalled = [_half_handshake(served.port, "127.0.0.2") for _ in range(4)]
        assert all(_closed_within(conn, 10) for conn in stalled)  # after http.header_timeout
        for conn in stalled:
            conn.close()
        # Every place is free again: three held, the fourth serves, a fifth is refused.
        held = [_half_handshake(served.port, "127.0.0.2") for _ in range(3)]
        assert served.get_v2(ctx, "127.0.0.2").startswith(b"HTTP/1.1 200")
        held.append(_half_handshake(served.port, "127.0.0.2"))
        assert served.get_v2(ctx, "127.0.0.2").startswith(b"HTTP/1.1 429")
        for conn in held:
            conn.close()


class _Transport:
    """What ConnectionGuard asks of a connection's transport."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return (self.client, 50000) if name == "peername" else None

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


class _Handler:
    """aiohttp's RequestHandler, as ConnectionGuard refuses it."""

    _force_close = False


class _Server:
    """The two hooks of aiohttp's ``web.Server`` that ConnectionGuard wraps."""

    def connection_made(self, handler: object, transport: object) -> None:
        pass

    def connection_lost(self, handler: object, exc: BaseException | None = None) -> None:
        pass


async def test_a_tls_connection_over_the_limits_is_logged_once() -> None:
    # Refused when accepted, and looked at again once its handshake was done (a place may
    # have come free): the one refused connection was logged (and counted) as two hits.
    log = LimitLog()
    guard = ConnectionGuard(max_connections=0, max_per_client=1, header_timeout=0, log=log)
    server = _Server()
    guard.install(server)  # type: ignore[arg-type]
    held, refused = _Handler(), _Handler()
    assert guard.admit(held, _Transport("127.0.0.2"))
    transport = _Transport("127.0.0.2")
    assert not guard.admit(refused, transport)  # accepted: tls_accept.FirstBytes asks
    server.connection_made(refused, transport)  # its handshake done: the web.Server sees it
    assert transport.written.startswith(b"HTTP/1.1 429")
    assert log.hits == {"connections_per_client": 1}
    server.connection_lost(refused)
    # Another connection refused later is a hit of its own.
    again = _Transport("127.0.0.2")
    assert not guard.admit(_Handler(), again)
    assert log.hits == {"connections_per_client": 2}
