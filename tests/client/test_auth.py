"""Credentials (env, config.json auths, credential helpers), Basic auth against real
registries at any concurrency, the Bearer token flow, and what an auth failure says."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web
from click.testing import CliRunner

from cas import Digest
from registry.client.auth import (
    AuthError,
    Credentials,
    erase_credentials,
    lookup_credentials,
    parse_challenge,
    store_credentials,
)
from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import ClientOptions, RegistryClient
from testkit.registries import registry_of_kind
from testkit.tools import require_tool

from .helpers import Proxy, SampleImage, simple_image, store_image


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


def test_credentials_written_out_as_username_and_password_are_read_as_docker_does(
        docker_config: Path) -> None:
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps({"auths": {
        "reg.example": {"username": "amy", "password": "pw"},
        "half.example": {"username": "amy"}}}))
    assert lookup_credentials("reg.example") == Credentials("amy", "pw")
    assert lookup_credentials("half.example") is None


def install_fake_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``docker-credential-fake`` (testfiles) on PATH, logging to tmp_path/helper.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fake"
    helper.write_text((Path(__file__).parent / "testfiles" / "docker-credential-fake").read_text())
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_HELPER_LOG", str(tmp_path / "helper.log"))


def test_credential_helper(docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_helper(tmp_path, monkeypatch)
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
        self.scope_in_challenge = True  # False: challenges name no scope (only the realm)

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
        await asyncio.sleep(0.05)  # a token server takes a moment: requests pile up meanwhile
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
        marker = next(i for i, p in enumerate(parts)
                      if p in ("manifests", "blobs", "tags", "_oci", "_pybuild", "referrers"))
        name = "/".join(parts[2:marker])
        action = "pull" if request.method in ("GET", "HEAD") else "pull,push"
        return f"repository:{name}:{action}"

    async def gate(self, request: web.Request) -> web.StreamResponse:
        need = self.needed(request)
        header = request.headers.get("Authorization", "")
        granted: list[str] = []
        if header.startswith("Bearer "):
            granted = json.loads(base64.b64decode(header[7:]))
        if header.startswith("Bearer ") and (need is None or _grants(granted, need)):
            return await self.proxy.handle(request)
        challenge = f'Bearer realm="{self.realm}",service="test"'
        if need and self.scope_in_challenge:
            challenge += f',scope="{need}"'
        return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "token needed"}]},
                                 status=401, headers={"WWW-Authenticate": challenge})


def _grants(granted: list[str], need: str) -> bool:
    """Whether scopes ``granted`` cover ``need`` (``repository:NAME:pull,push`` grants pull)."""
    name, _, actions = need.rpartition(":")
    return any(g.rpartition(":")[0] == name and set(actions.split(",")) <= set(g.rpartition(":")[2].split(","))
               for g in granted)


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
        with pytest.raises(AuthError, match="refused.*pybuild login") as info:
            await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                             client, Progress("quiet"), CopyOptions())
    assert "'alice'" in str(info.value) and "PYBUILD_REGISTRY_USER" in str(info.value)


@pytest.mark.parametrize("scope_in_challenge", [True, False])
async def test_concurrent_requests_share_one_token_per_scope(
    pybuild_registry: str, aiohttp_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    scope_in_challenge: bool,
) -> None:
    gate = TokenGate(pybuild_registry)
    gate.scope_in_challenge = scope_in_challenge
    server = await aiohttp_server(gate.app())
    host = f"127.0.0.1:{server.port}"
    gate.realm = f"http://{host}/token"
    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "alice")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "secret")
    await push_then_pull(tmp_path, f"{host}/auth/many:v1", many_layers(), 16)
    asked = Counter(frozenset(r["scope"]) for r in gate.token_requests)
    assert asked and set(asked.values()) == {1}, asked

    # A refusal is shared too: one token request, not one per waiting request.
    gate.token_requests.clear()
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "wrong")
    message = await push_error(tmp_path, host)
    assert "refused the credentials of user 'alice'" in message
    assert len(gate.token_requests) == 1, gate.token_requests


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
    digest = Digest.of(b"blob-bytes")
    options = ClientOptions(credentials={host: Credentials("u", "p")})
    async with RegistryClient(options) as client, client.open_blob(host, "x/y", digest) as resp:
        assert await resp.read() == b"blob-bytes"
    assert seen == [""]


# --- Basic auth against real registries -----------------------------------------------------

@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"wonderland", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return path


@pytest.fixture(params=["pybuild", "distribution"])
def basic_registry(request: pytest.FixtureRequest, tmp_path: Path, htpasswd: Path) -> Iterator[str]:
    """host:port of a registry process that requires basic auth (alice / wonderland):
    ``pybuild serve --htpasswd`` and CNCF Distribution with ``auth.htpasswd``."""
    if request.param == "distribution":
        require_tool("docker-registry")
    with registry_of_kind(request.param, tmp_path / request.param, htpasswd) as running:
        yield running.addr


def many_layers() -> SampleImage:
    # Enough blobs that a push at -j 16 has many requests in flight at its first 401.
    return simple_image(77, (20_000,) * 24)


async def push_then_pull(tmp_path: Path, ref: str, image: SampleImage, jobs: int) -> None:
    options = CopyOptions(jobs=jobs)
    async with await ImageStore.open(tmp_path / f"push-{jobs}") as images, RegistryClient() as client:
        await store_image(images, ref, image)
        pushed = await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images,
                                  client, Progress("quiet"), options)
    assert pushed.digest == image.digest
    assert set(pushed.blobs.values()) == {"pushed"}
    async with await ImageStore.open(tmp_path / f"pull-{jobs}") as images, RegistryClient() as client:
        pulled = await copy_image(parse_endpoint(ref), parse_endpoint(f"local:{ref}"), images,
                                  client, Progress("quiet"), options)
        assert pulled.digest == image.digest
        for blob in (image.config, *image.layers):
            assert await images.store.read_bytes(Digest.of(blob)) == blob


@pytest.mark.parametrize("jobs", [1, 16])
async def test_basic_auth_push_and_pull_at_any_concurrency(
    basic_registry: str, jobs: int, tmp_path: Path,
) -> None:
    """Every request that met the first 401 together retries with the credentials."""
    store_credentials(basic_registry, Credentials("alice", "wonderland"))  # as pybuild login does
    await push_then_pull(tmp_path, f"{basic_registry}/auth/many:j{jobs}", many_layers(), jobs)


async def test_concurrent_requests_share_one_credential_lookup(
    pybuild_auth_registry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: Path,
) -> None:
    install_fake_helper(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_HELPER_SERVER", pybuild_auth_registry)
    monkeypatch.setenv("FAKE_HELPER_USER", "alice")
    monkeypatch.setenv("FAKE_HELPER_SECRET", "wonderland")
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps({"credHelpers": {pybuild_auth_registry: "fake"}}))
    await push_then_pull(tmp_path, f"{pybuild_auth_registry}/auth/helped:v1", many_layers(), 16)
    gets = [line for line in (tmp_path / "helper.log").read_text().splitlines()
            if line.startswith("get ")]
    assert gets == [f"get {pybuild_auth_registry}"] * 2  # one per client (push, pull)


@pytest.fixture
async def pybuild_auth_registry(aiohttp_server: Any, tmp_path: Path, htpasswd: Path) -> str:
    """host:port of an in-process pybuild registry that requires basic auth (alice /
    wonderland)."""
    from registry.server import ServerConfig, make_app

    server = await aiohttp_server(make_app(ServerConfig(auth_htpasswd=htpasswd),
                                           storage=tmp_path / "auth-registry"))
    return f"127.0.0.1:{server.port}"


# --- what an auth failure says ---------------------------------------------------------------

async def push_error(tmp_path: Path, host: str, jobs: int = 16) -> str:
    ref = f"{host}/auth/denied:v1"
    async with await ImageStore.open(tmp_path / "denied") as images, RegistryClient() as client:
        await store_image(images, ref, many_layers())
        with pytest.raises(AuthError) as info:
            await copy_image(parse_endpoint(f"local:{ref}"), parse_endpoint(ref), images,
                             client, Progress("quiet"), CopyOptions(jobs=jobs))
    message = str(info.value)
    assert "\n" not in message
    assert f"pybuild login {host}" in message
    return message


async def test_no_credentials_says_none_were_found_and_to_log_in(
    pybuild_auth_registry: str, tmp_path: Path, docker_config: Path,
) -> None:
    message = await push_error(tmp_path, pybuild_auth_registry)
    assert "no credentials" in message
    assert str(docker_config) in message and "PYBUILD_REGISTRY_USER" in message


async def test_refused_credentials_name_their_source(
    pybuild_auth_registry: str, tmp_path: Path, docker_config: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = pybuild_auth_registry
    store_credentials(host, Credentials("alice", "wrong"))
    message = await push_error(tmp_path, host)
    assert "'alice'" in message and str(docker_config) in message and "refused" in message

    monkeypatch.setenv("PYBUILD_REGISTRY_USER", "carol")
    monkeypatch.setenv("PYBUILD_REGISTRY_PASSWORD", "nope")
    message = await push_error(tmp_path, host)
    assert "'carol'" in message and "PYBUILD_REGISTRY_USER" in message
    assert str(docker_config) not in message
    monkeypatch.delenv("PYBUILD_REGISTRY_USER")

    install_fake_helper(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_HELPER_SERVER", host)  # answers helper-user, unknown there
    docker_config.write_text(json.dumps({"credHelpers": {host: "fake"}}))
    message = await push_error(tmp_path, host)
    assert "'helper-user'" in message and "docker-credential-fake" in message


def test_login_with_a_wrong_password_says_the_given_password_was_refused(
    tmp_path: Path, htpasswd: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with registry_of_kind("pybuild", tmp_path / "pybuild", htpasswd) as running:
        from builder.cli import main

        out = CliRunner().invoke(main, ["login", running.addr, "-u", "alice", "-p", "queen"])
        assert out.exit_code == 1
        assert "Traceback" not in out.output
        lines = out.output.strip().splitlines()
        assert len(lines) == 1, out.output
        assert "'alice'" in lines[0] and "password given" in lines[0]
        assert f"pybuild login {running.addr}" in lines[0]
        out = CliRunner().invoke(main, ["login", running.addr, "-u", "alice", "-p", "wonderland"])
        assert out.exit_code == 0, out.output


# --- credential sources that fail ------------------------------------------------------------

def install_broken_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: Path) -> None:
    bin_dir = tmp_path / "broken-bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-broken"
    helper.write_text((Path(__file__).parent / "testfiles" / "docker-credential-broken").read_text())
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    docker_config.parent.mkdir(parents=True, exist_ok=True)
    docker_config.write_text(json.dumps({"credHelpers": {"reg.example": "broken"}}))


def test_a_failing_credential_helper_is_named_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: Path,
) -> None:
    install_broken_helper(tmp_path, monkeypatch, docker_config)
    with pytest.raises(AuthError) as info:
        lookup_credentials("reg.example")
    message = str(info.value)
    assert "docker-credential-broken get failed" in message and "keyring is locked" in message
    assert f"credHelpers in {docker_config}" in message and "\n" not in message


def test_a_hanging_credential_helper_times_out_with_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_config: Path,
) -> None:
    install_broken_helper(tmp_path, monkeypatch, docker_config)
    monkeypatch.setenv("BROKEN_HELPER_MODE", "hang")
    monkeypatch.setattr("registry.client.auth.HELPER_TIMEOUT", 0.5)
    with pytest.raises(AuthError, match=r"docker-credential-broken get did not answer within "
                                        r"0\.5 s"):
        lookup_credentials("reg.example")


@pytest.mark.parametrize("doc", [{"credHelpers": ["reg.example"]}, {"auths": "reg.example"},
                                 ["not", "an", "object"], "{broken"])
def test_a_config_json_that_cannot_be_read_is_warned_of_and_the_registry_asked_without_it(
        docker_config: Path, doc: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As Docker: a pull goes on without credentials (an anonymous token may be all it
    needs), with one warning line naming the file and the fix; login refuses to write
    over it."""
    monkeypatch.setattr("registry.client.auth._WARNED", set())
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    assert lookup_credentials("reg.example") is None
    assert lookup_credentials("reg.example") is None
    err = capsys.readouterr().err
    assert err.startswith("WARNING: ") and err.count("\n") == 1, err
    assert str(docker_config) in err and "fix" in err and "without the credentials" in err
    with pytest.raises(AuthError, match=f"{docker_config}.*fix") as info:
        store_credentials("reg.example", Credentials("amy", "pw"))
    assert "\n" not in str(info.value)
    assert docker_config.read_text() == (doc if isinstance(doc, str) else json.dumps(doc))


def test_an_auths_entry_of_the_wrong_type_names_the_file(docker_config: Path) -> None:
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps({"auths": {"reg.example": {"auth": 42}}}))
    with pytest.raises(AuthError, match=f"{docker_config}.*(fix|pybuild login)") as info:
        lookup_credentials("reg.example")
    assert "\n" not in str(info.value)


# --- config.json as Docker keeps it ------------------------------------------------------------

@pytest.mark.parametrize("key", ["https://reg.example:5000/", "http://reg.example:5000/v2/",
                                 "reg.example:5000/", "https://reg.example:5000/v1/"])
def test_auths_keys_match_by_host_as_docker_matches_them(docker_config: Path, key: str) -> None:
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(json.dumps({"auths": {
        key: {"auth": base64.b64encode(b"amy:p:w").decode()},
        "other.example": {"auth": base64.b64encode(b"bob:x").decode()},
        "https://reg.example:50000/": {"auth": base64.b64encode(b"eve:x").decode()}}}))
    assert lookup_credentials("reg.example:5000") == Credentials("amy", "p:w")
    assert erase_credentials("reg.example:5000")
    assert set(json.loads(docker_config.read_text())["auths"]) == {
        "other.example", "https://reg.example:50000/"}
    assert lookup_credentials("reg.example:5000") is None


@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_an_empty_config_json_is_an_empty_configuration(docker_config: Path, text: str) -> None:
    docker_config.parent.mkdir(parents=True)
    docker_config.write_text(text)
    assert lookup_credentials("reg.example") is None
    store_credentials("reg.example", Credentials("amy", "pw"))
    assert lookup_credentials("reg.example") == Credentials("amy", "pw")


def test_login_into_a_linked_config_json_writes_the_linked_file(
        docker_config: Path, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    real = dotfiles / "docker-config.json"
    real.write_text(json.dumps({"auths": {"old.example": {"auth": "b2xkOnB3"}},
                                "detachKeys": "ctrl-x"}))
    docker_config.parent.mkdir(parents=True)
    docker_config.symlink_to(real)
    store_credentials("reg.example", Credentials("amy", "pw"))
    assert docker_config.is_symlink() and docker_config.resolve() == real.resolve()
    doc = json.loads(real.read_text())
    assert doc["detachKeys"] == "ctrl-x" and set(doc["auths"]) == {"old.example", "reg.example"}
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert sorted(p.name for p in dotfiles.iterdir()) == ["docker-config.json"]
    assert erase_credentials("reg.example") and docker_config.is_symlink()


def test_login_and_logout_take_a_url_as_docker_login_does(
    tmp_path: Path, htpasswd: Path, docker_config: Path,
) -> None:
    with registry_of_kind("pybuild", tmp_path / "pybuild", htpasswd) as running:
        from builder.cli import main

        out = CliRunner().invoke(main, ["login", f"https://{running.addr}/", "-u", "alice",
                                        "-p", "wonderland"])
        assert out.exit_code == 0, out.output
        auths = json.loads(docker_config.read_text())["auths"]
        assert list(auths) == [running.addr]
        assert base64.b64decode(auths[running.addr]["auth"]) == b"alice:wonderland"
        out = CliRunner().invoke(main, ["logout", f"http://{running.addr}/v2/"])
        assert out.exit_code == 0, out.output
        assert json.loads(docker_config.read_text())["auths"] == {}



@pytest.mark.parametrize("typed", [b"wonderland\n", b"wonderland\r\n", b"wonderland"])
def test_a_password_from_stdin_loses_its_line_end_as_docker_login_strips_it(
    tmp_path: Path, htpasswd: Path, docker_config: Path, typed: bytes,
) -> None:
    # A real pipe: the CLI runner's text input would turn CRLF into LF before pybuild sees it.
    with registry_of_kind("pybuild", tmp_path / "pybuild", htpasswd) as running:
        out = subprocess.run(
            [sys.executable, "-c", "from builder.cli import main; main()", "login", running.addr,
             "-u", "alice", "--password-stdin"],
            input=typed, capture_output=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr.decode()
        assert lookup_credentials(running.addr) == Credentials("alice", "wonderland")
