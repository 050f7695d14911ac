"""``pybuild serve --htpasswd`` as a real process: absolute-form targets are authenticated
as the path they route to (escapes and dot segments refused before), the htpasswd file is
re-read when it changes, and SIGHUP reloads the configuration without stopping the server
(a bad one is logged and ignored)."""

from __future__ import annotations

import base64
import http.client
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest

from cas import Digest

from .test_serve_process import Server


def _entry(user: str, password: str) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _status(server: Server, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes = b"") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _until(check: Callable[[], bool], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    for _ in range(400):
        if check():
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return check()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(_entry("alice", "s3cret"))
    config = tmp_path / "registry.yaml"
    config.write_text(f"read_only: true\nauth:\n  htpasswd: {htpasswd}\n  realm: first\n")
    return config, htpasswd


@pytest.fixture
def server(tmp_path: Path, files: tuple[Path, Path]) -> Iterator[Server]:
    config, _ = files
    srv = Server(tmp_path / "storage", "--config", str(config), env={"PYBUILD_CONFIG": ""})
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.stop()


def _raw_status(port: int, request: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = sock.recv(65536)
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "target, status",
    [("http://evil/v2/_catalog", 401), ("http://127.0.0.1/v2/", 401), ("/%76%32/_catalog", 400),
     ("/x/../v2/", 400), ("http://evil/%76%32/_catalog", 400), ("http://evil/x/../v2/", 400)],
)
def test_targets_are_authenticated_as_the_path_they_route_to_or_refused(server, target, status):
    assert _raw_status(server.port, b"GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n") == 401
    answer = _raw_status(
        server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer == status


def test_a_new_htpasswd_user_can_log_in_without_a_restart(server, files):
    _, htpasswd = files
    assert _status(server, "GET", "/v2/", _basic("bob", "hunter2")) == 401
    htpasswd.write_text(_entry("alice", "s3cret") + _entry("bob", "hunter2"))
    assert _until(lambda: _status(server, "GET", "/v2/", _basic("bob", "hunter2")) == 200)
    assert _status(server, "GET", "/v2/", _basic("alice", "s3cret")) == 200


def test_sighup_reloads_the_configuration_and_keeps_serving(server, files):
    config, htpasswd = files
    alice = _basic("alice", "s3cret")
    digest = Digest.of(b"blob")
    push = f"/v2/r/blobs/uploads/?digest={digest}"
    assert _status(server, "POST", push, alice, b"blob") == 405  # read-only
    assert server.proc is not None

    config.write_text(f"read_only: false\nauth:\n  htpasswd: {htpasswd}\n  realm: second\n")
    server.proc.send_signal(signal.SIGHUP)
    assert _until(lambda: _status(server, "POST", push, alice, b"blob") == 201)
    assert server.proc.poll() is None

    # A config that does not load is logged; the running one stays and so does the server.
    config.write_text("read_only: false\nno_such_setting: 1\n")
    server.proc.send_signal(signal.SIGHUP)
    assert _until(lambda: "configuration not reloaded" in server.stderr.read_text())
    assert "no_such_setting" in server.stderr.read_text()
    assert server.proc.poll() is None
    assert _status(server, "GET", f"/v2/r/blobs/{digest}", alice) == 200
    assert _status(server, "GET", "/v2/") == 401  # still authenticating

    # A setting bound at start-up is kept, with a warning.
    config.write_text(f"shutdown_timeout: 5\nauth:\n  htpasswd: {htpasswd}\n")
    server.proc.send_signal(signal.SIGHUP)
    assert _until(lambda: "shutdown_timeout changed; restart" in server.stderr.read_text())
    assert _status(server, "GET", "/v2/", alice) == 200
    assert server.stop() == 0


async def test_a_reload_with_a_bad_htpasswd_changes_nothing(make_client, tmp_path, files):
    from registry.server import ServerConfig
    from registry.server.reload import reload_config
    from registry.server.state import REGISTRY

    _, htpasswd = files
    client = await make_client(auth_htpasswd=htpasswd, read_only=True)
    reg = client.server.app[REGISTRY]
    before, auth = reg.config, reg.auth
    broken = tmp_path / "broken-htpasswd"
    broken.write_text("mallory:plaintext\n")
    changed = ServerConfig(auth_htpasswd=broken, read_only=False)
    assert not await reload_config(reg, lambda: changed)
    assert reg.config is before and reg.auth is auth
    assert (await client.get("/v2/", headers=_basic("alice", "s3cret"))).status == 200
    # Switching to a usable file applies everything at once.
    good = tmp_path / "good-htpasswd"
    good.write_text(_entry("bob", "pw"))
    assert await reload_config(reg, lambda: ServerConfig(auth_htpasswd=good, read_only=False))
    assert not reg.config.read_only
    assert (await client.get("/v2/", headers=_basic("bob", "pw"))).status == 200
    assert (await client.get("/v2/", headers=_basic("alice", "s3cret"))).status == 401


# Read again from the running configuration at each use, so a reload applies them.
RELOADABLE = {
    "read_only", "storage_redirect", "auth_htpasswd", "auth_realm", "auth_token_realm",
    "auth_token_service", "auth_token_issuer", "auth_token_rootcertbundle", "auth_token_jwks",
    "auth_token_issue_key", "auth_token_issue_policy", "auth_token_issue_ttl",
    "delete_blobs", "delete_manifests", "delete_tags", "uploads_ttl", "uploads_expire_interval",
    "http_body_timeout", "cache_manifest_bytes", "retention_untagged_delay",
    "retention_upload_grace", "retention_policies",
}


def test_every_setting_is_either_reloaded_or_named_as_needing_a_restart():
    # A new setting must be placed: one bound at start-up but missing from RESTART_ONLY
    # would be silently ignored by a reload.
    import dataclasses

    from registry.server import ServerConfig
    from registry.server.reload import RESTART_ONLY

    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    assert not RELOADABLE & set(RESTART_ONLY)
    assert fields == RELOADABLE | set(RESTART_ONLY)


async def test_a_reload_keeps_the_packs_and_database_it_started_with_and_says_so(
        make_client, caplog):
    import dataclasses

    from cas.s3_location import S3Location
    from registry.server.reload import reload_config
    from registry.server.state import REGISTRY

    client = await make_client()
    reg = client.server.app[REGISTRY]
    moved = dataclasses.replace(
        reg.config, packs=S3Location.parse("s3://k:s@127.0.0.1:9/bucket/elsewhere/"),
        database_url="postgresql://registry@127.0.0.1:9/registry", delete_blobs=False)
    with caplog.at_level("WARNING", logger="pybuild.registry"):
        assert await reload_config(reg, lambda: moved)
    assert reg.config.packs is None and reg.config.database_url is None
    assert not reg.config.delete_blobs  # the rest applies
    assert "reload: packs, database_url changed; restart the server to apply it" in caplog.text
    assert "k:s@" not in caplog.text
