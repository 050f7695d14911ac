"""Credentials (env, config.json auths, credential helpers) and the Bearer token flow."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from registry.client.auth import (
    AuthError,
    Credentials,
    erase_credentials,
    lookup_credentials,
    parse_challenge,
    store_credentials,
)
from registry.client.remote import ClientOptions, RegistryClient
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress

from .helpers import Proxy, simple_image, store_image


@pytest.fixture(autouse=True)
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    for name in ("PYBUILD_REGISTRY_USER", "PYBUILD_REGISTRY_PASSWORD", "PYBUILD_REGISTRY_HOST"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "docker" / "config.json"


def test_parse_challenge() -> None:
    c = parse_challenge('Bearer realm="https://auth.example/token",service="reg",'
                        'scope="repository:a/b:pull,push"')
    assert c.scheme == "bearer"
    assert c.params == {"realm": "https://auth.example/token", "service": "reg",
                        "scope": "repository:a/b:pull,push"}
    assert parse_challenge('Basic realm="x"').scheme == "basic"


def test_credentials_from_env_then_config(docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lookup_credentials("reg.example") is None
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps(
        {"auths": {"reg.example": {"auth": base64.b64encode(b"bob:pw:with:colons").decode()}}}))
    assert lookup_credentials("reg.example") == Credentials("bob", "pw:with:colons")
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "ci")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "token")
    assert lookup_credentials("reg.example") == Credentials("ci", "token")
    monkeypatch.setenv("PYBUILD_REGISTRY_HOST", "other.example")
    assert lookup_credentials("reg.example") == Credentials("bob", "pw:with:colons")


def test_credential_helper(docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text((Path(__file__).parent / "testfiles" / "docker-credential-fake").read_text())
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HELPER_LOG", str(tmp_path / "helper.log"))
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps({"credHelpers": {"helped.example": "fake"}}))
    assert lookup_credentials("helped.example") == Credentials("helper-user", "helper-secret")
    assert lookup_credentials("unhelped.example") is None
    docker_config.write_text(json.dumps({"credsStore": "fake"}))
    store_credentials("stored.example", Credentials("u", "p"))
    log = (tmp_path / "helper.log").read_text()
    assert "store" in log and '"Username": "u"' in log
    assert json.loads(docker_config.read_text())["auths"] == {"stored.example": {}}
    docker_config.write_text(json.dumps({"credHelpers": {"x.example": "missing"}}))
    with pytest.raises(AuthError, match="docker-credential-missing is not installed"):
        lookup_credentials("x.example")


def test_store_and_erase_credentials(docker_config: Path) -> None:
    path = store_credentials("reg.example:5000", Credentials("amy", "pw"))
    assert path == docker_config
    doc = json.loads(docker_config.read_text())
    assert base64.b64decode(doc["auths"]["reg.example:5000"]["auth"]) == b"amy:pw"
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    assert lookup_credentials("reg.example:5000") == Credentials("amy", "pw")
    assert erase_credentials("reg.example:5000")
    assert not erase_credentials("reg.example:5000")
    assert lookup_credentials("reg.example:5000") is None


class TokenGate:
    """A token server plus a registry front that demands Bearer tokens with scopes."""

    def __init__(self, upstream: str) -> None:
        self.proxy = Proxy(f"http://{upstream}")
        self.token_requests: list[dict[str, Any]] = []
        self.realm = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/token", self.token)
        app.router.add_route("*", "/{tail:.*}", self.gate)

        async def close(_: web.Application) -> None:
            if self.proxy.session is not None:
                await self.proxy.session.close()

        app.on_cleanup.append(close)
        return app

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append({"service": request.query.get("service"),
                                    "scope": request.query.getall("scope", []),
                                    "auth": request.headers.get("Authorization", "")})
        if request.headers.get("Authorization") != Credentials("alice", "secret").basic():
            return web.json_response({"details": "bad credentials"}, status=401)
        scopes = request.query.getall("scope", [])
        return web.json_response({"token": base64.b64encode(json.dumps(scopes).encode()).decode()})

    def needed(self, request: web.Request) -> str | None:
        parts = request.path.split("/")
        if request.path == "/v2/":
            return None
        marker = next(i for i, p in enumerate(parts) if p in ("manifests", "blobs", "tags", "_oci", "_pybuild", "referrers"))
        name = "/".join(parts[2:marker])
        action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
        return f"repository:{name}:{action}"

    async def gate(self, request: web.Request) -> web.StreamResponse:
        need = self.needed(request)
        header = request.headers.get("Authorization", "")
        granted: list[str] = []
        if header.startswith("Bearer "):
            granted = json.loads(base64.b64decode(header[7:]))
        if header.startswith("Bearer ") and (need is None or need in granted):
            return await self.proxy.handle(request)
        challenge = f'Bearer realm="{self.realm}",service="test"'
        if need:
            challenge += f',scope="{need}"'
        return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "token needed"}]},
                                 status=401, headers={"WWW-Authenticate": challenge})


async def test_bearer_token_flow_with_scopes(
    pybuild_registry: str, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = TokenGate(pybuild_registry)
    server = await aiohttp_server(gate.app())
    host = f"127.0.0.1:{server.port}"
    gate.realm = f"http://{host}/token"
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "alice")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "secret")
    image = simple_image(40, (50_000,))
    ref = f"{host}/auth/app:v1"
    async with await ImageStore.open(tmp_path / "a") as images, RegistryClient() as client:
        await store_image(images, ref, image)
        pushed = await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images,
                                  client, Progress("quiet"), CopyOptions())
        assert pushed.digest == image.digest
    scopes = {s for r in gate.token_requests for s in r["scope"]}
    assert "repository:auth/app:pull,push" in scopes
    assert all(r["service"] == "test" for r in gate.token_requests)
    # Tokens are cached per scope set: a handful of token requests, not one per request.
    assert 1 <= len(gate.token_requests) <= 3
    async with await ImageStore.open(tmp_path / "b") as images, RegistryClient() as client:
        pulled = await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                                  client, Progress("quiet"), CopyOptions())
        assert pulled.digest == image.digest
    assert "repository:auth/app:pull" in {s for r in gate.token_requests for s in r["scope"]}

    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "wrong")
    async with await ImageStore.open(tmp_path / "c") as images, RegistryClient() as client:
        with pytest.raises(AuthError, match="refused.*pybuild login"):
            await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                             client, Progress("quiet"), CopyOptions())


async def test_credentials_never_follow_a_redirect_to_another_host(aiohttp_server: Any) -> None:
    seen: list[str] = []

    async def storage(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.Response(body=b"blob-bytes")

    storage_app = web.Application()
    storage_app.router.add_get("/{tail:.*}", storage)
    store_server = await aiohttp_server(storage_app)

    async def registry(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != Credentials("u", "p").basic():
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        # "localhost" is another host than 127.0.0.1 as far as credentials go.
        raise web.HTTPTemporaryRedirect(f"http://localhost:{store_server.port}/data")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", registry)
    server = await aiohttp_server(app)
    host = f"127.0.0.1:{server.port}"
    from cas import Digest

    digest = Digest.of(b"blob-bytes")
    async with RegistryClient(ClientOptions(credentials={host: Credentials("u", "p")})) as client:
        async with client.open_blob(host, "x/y", digest) as resp:
            assert await resp.read() == b"blob-bytes"
    assert seen == [""]
