"""The built-in token server (``auth.token.issue``): the token flow, the policy (users,
groups, patterns, anonymous pull, reload), catalog filtering, robots."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import errno
import os
import shutil
import stat
import time
from pathlib import Path

import bcrypt
import jwt
import pytest
from click.testing import CliRunner

from cas import Digest
from registry.robot_cmd import robot as robot_cli
from registry.server.auth import BasicAuth
from registry.server.config import ConfigError
from registry.server.reload import reload_config
from registry.server.robots import create_robot, revoke_robot, robots_path
from registry.server.state import REGISTRY
from registry.server.token_server import load_signing_key
from registry.server.tokens import TokenAuth

from .helpers import error_codes, push_image

TESTFILES = Path(__file__).parent / "testfiles" / "tokens"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(
        f"{u}:{bcrypt.hashpw(b'pw-' + u.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for u in ("alice", "bob", "admin")
    ))
    policy = tmp_path / "access.yaml"
    shutil.copy(TESTFILES / "access.yaml", policy)
    return {"htpasswd": htpasswd, "policy": policy, "key": tmp_path / "keys" / "token.pem",
            "storage": tmp_path / "storage"}


@pytest.fixture
async def client(make_client, setup):
    return await make_client(
        storage=setup["storage"],
        auth_htpasswd=setup["htpasswd"],
        auth_token_issue_key=setup["key"],
        auth_token_issue_policy=setup["policy"],
    )


async def token(client, user: str | None, *scopes: str, service: str = "pybuild-registry") -> str:
    params = [("service", service), *(("scope", s) for s in scopes)]
    headers = _basic(user, f"pw-{user}") if user else {"Authorization": ""}
    resp = await client.get("/token", params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["token"] == doc["access_token"]
    assert 60 <= doc["expires_in"] <= 300 and doc["issued_at"].endswith("Z")
    return str(doc["token"])


def granted(tok: str) -> dict[str, list[str]]:
    claims = jwt.decode(tok, options={"verify_signature": False})
    return {f"{a['type']}:{a['name']}": a["actions"] for a in claims["access"]}


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


async def as_admin(client, repos: list[str]) -> None:
    tok = await token(client, "admin", *(f"repository:{r}:*" for r in repos))
    client.session.headers["Authorization"] = f"Bearer {tok}"


async def test_challenge_names_this_servers_token_endpoint(client):
    resp = await client.get("/v2/team/app/tags/list")
    assert resp.status == 401
    host = f"{client.host}:{client.port}"
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{host}/token",service="pybuild-registry",scope="repository:team/app:pull"'
    )


@pytest.mark.parametrize("host", ['evil"x,realm="http://attacker', "a b", "x\\y"])
async def test_a_host_header_cannot_write_the_challenge(client, host):
    """The realm names the Host the client used, but only one that is a host[:port]:
    a quote would close the realm and add parameters of the client's choosing."""
    resp = await client.get("/v2/team/app/tags/list", headers={"Host": host})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="http://{client.host}:{client.port}/token",service="pybuild-registry",'
        'scope="repository:team/app:pull"'
    )


async def test_token_grants_the_intersection_of_asked_and_allowed(client):
    alice = await token(client, "alice", "repository:team/app:pull,push,delete", "repository:secret/x:pull")
    assert granted(alice) == {"repository:team/app": ["pull", "push"]}
    bob = await token(client, "bob", "repository:team/app:pull,push")
    assert granted(bob) == {"repository:team/app": ["pull"]}
    admin = await token(client, "admin", "repository:secret/x:*")
    assert granted(admin) == {"repository:secret/x": ["*"]}
    # "*" (what skopeo asks to delete) is every action: a caller gets those it may take.
    assert granted(await token(client, "alice", "repository:team/app:*")) == {"repository:team/app": ["pull", "push"]}
    assert granted(await token(client, "bob", "repository:team/lib:*")) == {}
    claims = jwt.decode(alice, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["aud"] == "pybuild-registry"
    assert claims["iss"] == "pybuild-token-server" and claims["exp"] - claims["iat"] == 300


async def test_push_and_pull_with_issued_tokens_and_a_denied_push_changes_nothing(client):
    alice = await token(client, "alice", "repository:team/app:pull,push")
    client.session.headers["Authorization"] = f"Bearer {alice}"
    digest, _ = await push_image(client, "team/app", "v1", [b"layer"])
    bob = await token(client, "bob", "repository:team/app:pull,push")
    resp = await client.get("/v2/team/app/manifests/v1", headers={
        **bearer(bob), "Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert resp.status == 200 and resp.headers["Docker-Content-Digest"] == str(digest)
    refused = await client.put("/v2/team/app/manifests/v2", data=await resp.read(), headers={
        **bearer(bob), "Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert refused.status == 401 and await error_codes(refused) == ["UNAUTHORIZED"]
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    blob = await client.post(f"/v2/team/app/blobs/uploads/?digest={Digest.of(b'bob')}", data=b"bob",
                             headers=bearer(bob))
    assert blob.status == 401
    tags = await client.get("/v2/team/app/tags/list")
    assert (await tags.json())["tags"] == ["v1"]
    assert (await client.head(f"/v2/team/app/blobs/{Digest.of(b'bob')}")).status == 404


async def test_anonymous_callers_get_what_the_policy_gives_everyone(client):
    anonymous = await token(client, None, "repository:lib/public/base:pull,push", "repository:team/app:pull")
    assert granted(anonymous) == {"repository:lib/public/base": ["pull"]}
    claims = jwt.decode(anonymous, options={"verify_signature": False})
    assert claims["sub"] == ""
    await as_admin(client, ["lib/public/base"])
    await push_image(client, "lib/public/base", "v1", [b"base"])
    resp = await client.get("/v2/lib/public/base/tags/list", headers=bearer(anonymous))
    assert resp.status == 200 and (await resp.json())["tags"] == ["v1"]


async def test_bad_credentials_and_requests(client):
    resp = await client.get("/token", params={"scope": "repository:a:pull"}, headers=_basic("alice", "nope"))
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
    resp = await client.get("/token", headers=_basic("mallory", "pw-mallory"))
    assert resp.status == 401
    resp = await client.get("/token", headers={"Authorization": "Basic !!!"})
    assert resp.status == 401
    resp = await client.get("/token", params={"scope": "nonsense"}, headers=_basic("alice", "pw-alice"))
    assert resp.status == 400 and "invalid scope" in await resp.text()
    resp = await client.get("/token", params={"service": "other"}, headers=_basic("alice", "pw-alice"))
    assert resp.status == 400
    resp = await client.put("/token")
    assert resp.status == 405


async def test_oauth2_password_form(client):
    resp = await client.post("/token", data={
        "grant_type": "password", "username": "alice", "password": "pw-alice",
        "service": "pybuild-registry", "scope": "repository:team/app:pull", "client_id": "test",
    })
    assert resp.status == 200
    assert granted((await resp.json())["access_token"]) == {"repository:team/app": ["pull"]}
    resp = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
    assert resp.status == 400


async def test_catalog_lists_only_what_the_caller_may_pull(client):
    repos = ["team/app", "team/lib", "lib/public/base", "secret/x"]
    await as_admin(client, repos)
    for repo in repos:
        await push_image(client, repo, "v1", [repo.encode()])

    async def catalog(user: str | None, query: str = "") -> list[str]:
        tok = await token(client, user, "registry:catalog:*")
        assert granted(tok) == {"registry:catalog": ["*"]}
        resp = await client.get(f"/v2/_catalog{query}", headers=bearer(tok))
        assert resp.status == 200
        return list((await resp.json())["repositories"])

    assert await catalog("admin") == sorted(repos)
    assert await catalog("alice") == ["lib/public/base", "team/app", "team/lib"]
    assert await catalog("bob") == ["lib/public/base", "team/app"]
    assert await catalog(None) == ["lib/public/base"]
    assert await catalog("alice", "?n=1&last=lib/public/base") == ["team/app"]
    alice = await token(client, "alice", "repository:secret/x:pull")
    resp = await client.get("/v2/secret/x/tags/list", headers=bearer(alice))
    assert resp.status == 401


async def test_the_policy_is_reread_when_it_changes(client, setup):
    assert granted(await token(client, "bob", "repository:team/app:push")) == {}
    text = setup["policy"].read_text().replace(
        "users: [bob]\n    actions: [pull]", "users: [bob]\n    actions: [pull, push]"
    )
    assert text != setup["policy"].read_text()
    setup["policy"].write_text(text)
    deadline = time.monotonic() + 8
    got: dict[str, list[str]] = {}
    while time.monotonic() < deadline and not got:
        await asyncio.sleep(0.2)
        got = granted(await token(client, "bob", "repository:team/app:push"))
    assert got == {"repository:team/app": ["push"]}
    setup["policy"].write_text("rules: [{repositories: ['a'], actions: [fly]}]\n")
    await asyncio.sleep(1.2)
    # A broken file is not used: the rules loaded before stay.
    assert granted(await token(client, "bob", "repository:team/app:push")) == {"repository:team/app": ["push"]}


def test_a_signing_key_cut_short_is_not_left_behind(tmp_path, monkeypatch):
    """A key whose writing fails (a full disk; a process killed mid-write) is not left as
    an empty file that every later start refuses, nor read half-written by a replica
    starting at the same moment: the key file appears whole or not at all."""
    path = tmp_path / "keys" / "token.pem"
    real_fdopen = os.fdopen

    class DiskFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: DiskFull(real_fdopen(fd, mode, *a, **k)))
    with pytest.raises(ConfigError, match="cannot create auth.token.issue.key .*No space left"):
        load_signing_key(path)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []
    monkeypatch.undo()
    assert load_signing_key(path).public_key() is not None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_the_signing_key_is_made_once_and_kept(make_client, setup, client):
    key = setup["key"]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = key.read_bytes()
    old = await token(client, "alice", "repository:team/app:pull")
    again = await make_client(storage=setup["storage"], auth_htpasswd=setup["htpasswd"],
                              auth_token_issue_key=key, auth_token_issue_policy=setup["policy"])
    assert key.read_bytes() == before
    resp = await again.get("/v2/team/app/tags/list", headers=bearer(old))
    assert resp.status == 404  # accepted by the restarted server: the repository is just empty


async def test_robots_get_their_scope_until_revoked(client, setup):
    path = robots_path(setup["storage"])
    secret = create_robot(path, "ci", ["repository:team/*:pull,push"], 3600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and secret not in path.read_text()
    resp = await client.get("/token", params={"scope": "repository:team/app:pull,push,delete"},
                            headers=_basic("robot+ci", secret))
    assert resp.status == 200
    tok = (await resp.json())["token"]
    assert granted(tok) == {"repository:team/app": ["pull", "push"]}
    assert jwt.decode(tok, options={"verify_signature": False})["sub"] == "robot+ci"
    client.session.headers["Authorization"] = f"Bearer {tok}"
    await push_image(client, "team/app", "ci", [b"from ci"])
    assert (await client.get("/token", headers=_basic("robot+ci", "wrong"))).status == 401

    assert revoke_robot(path, "ci")
    await asyncio.sleep(1.1)  # the robots file is looked at once a second
    resp = await client.get("/v2/team/app/tags/list")
    assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await client.get("/token", headers=_basic("robot+ci", secret))).status == 401


async def test_a_replaced_robots_tokens_stop_working(client, setup):
    """``robot create`` of an existing name rotates its secret (and may narrow its
    scopes): what the robot it replaced holds stops working, tokens too, not only the
    secret."""
    path = robots_path(setup["storage"])
    issuer = client.app[REGISTRY].auth.issuer
    old_secret = create_robot(path, "ci", ["repository:team/*:pull,push"], 3600)
    issuer.robots._next_check = 0.0  # look at the robots file now
    got = await client.get("/token", params={"scope": "repository:team/app:pull"},
                           headers=_basic("robot+ci", old_secret))
    old = (await got.json())["token"]
    resp = await client.get("/v2/team/app/tags/list", headers=bearer(old))
    assert resp.status == 404  # accepted: the repository is just empty

    new_secret = create_robot(path, "ci", ["repository:team/app:pull"], 3600)
    issuer.robots._next_check = 0.0
    resp = await client.get("/v2/team/app/tags/list", headers=bearer(old))
    assert resp.status == 401 and 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert (await client.get("/token", headers=_basic("robot+ci", old_secret))).status == 401
    new = await client.get("/token", params={"scope": "repository:team/app:pull"},
                           headers=_basic("robot+ci", new_secret))
    resp = await client.get("/v2/team/app/tags/list", headers=bearer((await new.json())["token"]))
    assert resp.status == 404


async def test_an_expired_robot_gets_no_token(client, setup):
    path = robots_path(setup["storage"])
    secret = create_robot(path, "old", ["repository:team/app:pull"], 1)
    await asyncio.sleep(1.1)
    assert (await client.get("/token", headers=_basic("robot+old", secret))).status == 401


def test_robot_command_line(setup):
    runner = CliRunner()
    storage = str(setup["storage"])
    made = runner.invoke(robot_cli, ["create", "ci", "--scope", "repository:app:pull,push",
                                     "--expires", "30d", "--storage", storage])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert secret.startswith("pbrobot_")
    listed = runner.invoke(robot_cli, ["list", "--storage", storage])
    assert listed.exit_code == 0 and listed.stdout.startswith("robot+ci\t")
    assert "repository:app:pull,push" in listed.stdout
    for bad in (["create", "Bad Name", "--scope", "repository:a:pull"],
                ["create", "ci", "--scope", "repository:a:fly"],
                ["create", "ci", "--scope", "nonsense"],
                ["create", "ci", "--scope", "repository:a:pull", "--expires", "soon"]):
        result = runner.invoke(robot_cli, [*bad, "--storage", storage])
        assert result.exit_code == 2 and "Error" in result.output, result.output
    assert runner.invoke(robot_cli, ["revoke", "ci", "--storage", storage]).exit_code == 0
    gone = runner.invoke(robot_cli, ["revoke", "ci", "--storage", storage])
    assert gone.exit_code == 1 and "no robot named 'ci'" in gone.output


async def test_reload_turns_tokens_on_and_a_broken_token_config_changes_nothing(make_client, setup):
    plain = await make_client(storage=setup["storage"], auth_htpasswd=setup["htpasswd"])
    reg = plain.server.app[REGISTRY]
    assert isinstance(reg.auth, BasicAuth)
    tokens = dataclasses.replace(
        reg.config, auth_token_issue_key=setup["key"], auth_token_issue_policy=setup["policy"]
    )
    assert await reload_config(reg, lambda: tokens)
    assert isinstance(reg.auth, TokenAuth)
    assert (await plain.get("/v2/", headers=_basic("alice", "pw-alice"))).status == 401
    tok = await token(plain, "alice", "repository:team/app:pull")
    assert (await plain.get("/v2/", headers=bearer(tok))).status == 200

    broken = dataclasses.replace(tokens, auth_token_issue_policy=setup["policy"].with_name("missing.yaml"))
    running = reg.auth
    assert not await reload_config(reg, lambda: broken)
    assert reg.auth is running


async def test_token_request_bodies_are_bounded(client):
    resp = await client.post("/token", data=b"a=" + b"x" * 70000,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 413
    resp = await client.post("/token", data=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400


async def test_a_token_form_is_read_whole_when_it_comes_in_parts(client):
    """A form whose bytes arrive in several reads (TCP segments, HTTP chunks) is read to
    its end, not cut at the first read: the password and scope past the cut count."""
    form = b"grant_type=password&username=alice&password=pw-alice&scope=repository:team/app:pull"

    async def parts():
        yield form[:30]
        await asyncio.sleep(0.1)  # the server has read what came so far
        yield form[30:]

    resp = await client.post("/token", data=parts(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200, await resp.text()
    assert granted((await resp.json())["token"]) == {"repository:team/app": ["pull"]}


async def test_a_token_form_that_stops_arriving_is_refused(make_client, setup):
    client = await make_client(storage=setup["storage"], auth_htpasswd=setup["htpasswd"],
                               auth_token_issue_key=setup["key"], http_body_timeout=0.3)
    stop = asyncio.Event()

    async def stalled():
        yield b"grant_type=password&username=alice"
        await stop.wait()
        yield b"&password=pw-alice"

    try:
        resp = await client.post("/token", data=stalled(),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert resp.status == 400
        assert "did not arrive within 0.3 s" in (await resp.json())["errors"][0]["message"]
    finally:
        stop.set()


async def test_no_token_is_issued_that_the_registry_would_refuse(client):
    """64 scopes of long (valid) names make a token over the size the registry reads:
    the token server says so, rather than hand out a token every request refuses."""
    scopes = [("scope", f"repository:{'a' * 250}{i:03d}/x:pull") for i in range(64)]
    resp = await client.post("/token", data=[("username", "admin"), ("password", "pw-admin"), *scopes])
    assert resp.status == 400
    assert "ask for fewer scopes" in (await resp.json())["errors"][0]["message"]
    assert granted(await token(client, "admin", *(s for _, s in scopes[:8]))).keys() == {
        f"repository:{'a' * 250}{i:03d}/x" for i in range(8)
    }
