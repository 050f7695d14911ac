"""The same tokens against CNCF Distribution (``auth.token``) and ``pybuild serve`` with the
same settings: both accept and refuse the same ones, with the same status, challenge,
error code and detail (but for a mount without pull on its source, see below). Tokens
name the bundle certificate's key by its libtrust key ID, which is what Distribution 2.8
looks up."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import pytest

from testkit.registries import (
    Response,
    RunningRegistry,
    distribution_registry,
    http,
    pybuild_configured_registry,
    pybuild_serve_available,
)
from testkit.tokens import ISSUER, REALM, SERVICE, Keys, bearer, make_keys, sign
from testkit.tools import require_tool

pytestmark = pytest.mark.slow

REPO = "team/app"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return make_keys(tmp_path_factory.mktemp("keys"))


def _settings(keys: Keys) -> dict[str, str]:
    return {"realm": REALM, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(keys.bundle)}


@pytest.fixture(scope="module")
def registries(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningRegistry]]:
    require_tool("docker-registry")
    if not pybuild_serve_available():
        pytest.fail("python3 -m builder serve does not start")
    base = tmp_path_factory.mktemp("parity")
    with (
        distribution_registry(base / "distribution", token=_settings(keys)) as distribution,
        pybuild_configured_registry(base / "pybuild", {"auth": {"token": _settings(keys)}}) as pybuild,
    ):
        yield {"distribution": distribution, "pybuild": pybuild}


def _kid(keys: Keys) -> dict[str, str]:
    from registry.server.tokens import libtrust_key_id

    return {"kid": libtrust_key_id(keys.ca_key.public_key())}


def _tokens(keys: Keys) -> dict[str, str | None]:
    now = int(time.time())
    kid = _kid(keys)

    def good(*scopes: str, **claims: object) -> str:
        return sign(keys.ca_key, scopes, headers=kid, **claims)

    return {
        "none": None,
        "pull": good(f"repository:{REPO}:pull"),
        "star": good(f"repository:{REPO}:*"),
        "other-repo": good("repository:team/other:pull"),
        "push-only": good(f"repository:{REPO}:push"),
        "expired": good(f"repository:{REPO}:pull", exp=now - 600),
        "wrong-audience": good(f"repository:{REPO}:pull", aud="elsewhere"),
        "wrong-issuer": good(f"repository:{REPO}:pull", iss="someone"),
        "badly-signed": sign(keys.stranger, (f"repository:{REPO}:pull",), headers=kid),
        "catalog": good("registry:catalog:*"),
    }


REQUESTS = {
    "base": ("GET", "/v2/"),
    "tags": ("GET", f"/v2/{REPO}/tags/list"),
    "manifest": ("GET", f"/v2/{REPO}/manifests/latest"),
    "upload": ("POST", f"/v2/{REPO}/blobs/uploads/"),
    "mount": ("POST", f"/v2/{REPO}/blobs/uploads/?mount=sha256:{'a' * 64}&from=team/other"),
    "delete": ("DELETE", f"/v2/{REPO}/manifests/latest"),
    "catalog": ("GET", "/v2/_catalog"),
}


def _summary(resp: Response) -> tuple[int, str | None, list[str]]:
    """Status, the challenge and the error codes with their details. Distribution lists a scope's actions in
    Go's map order, which varies: they are compared sorted."""
    challenge = resp.headers.get("www-authenticate")
    if challenge:
        challenge = re.sub(
            r'scope="([^"]*)"',
            lambda m: 'scope="' + " ".join(sorted(
                s.rpartition(":")[0] + ":" + ",".join(sorted(s.rpartition(":")[2].split(",")))
                for s in m.group(1).split()
            )) + '"',
            challenge,
        )
    codes: list[str] = []
    if resp.status >= 400 and resp.body:
        try:
            codes = [
                f"{e['code']} {sorted(json.dumps(d, sort_keys=True) for d in e.get('detail') or [])}"
                for e in json.loads(resp.body)["errors"]
            ]
        except (ValueError, KeyError, TypeError):
            codes = ["<not json>"]
    if resp.status != 401:
        return resp.status if resp.status < 400 else 400, None, []
    return resp.status, challenge, codes


@pytest.mark.parametrize("request_name", sorted(REQUESTS))
@pytest.mark.parametrize(
    "token_name",
    ["none", "pull", "star", "other-repo", "push-only", "expired", "wrong-audience", "wrong-issuer",
     "badly-signed", "catalog"],
)
def test_same_answers_as_distribution(registries, keys, request_name, token_name) -> None:
    token = _tokens(keys)[token_name]
    method, path = REQUESTS[request_name]
    headers = bearer(token) if token else {}
    answers = {
        kind: _summary(http(running.addr, method, path, headers=headers))
        for kind, running in registries.items()
    }
    if request_name == "mount" and token_name == "star":
        # The one deliberate difference: without pull on the source, Distribution refuses
        # the request; pybuild opens an ordinary upload session instead (spec: 202).
        assert answers["distribution"][0] == 401 and "insufficient_scope" in str(answers["distribution"][1])
        assert answers["pybuild"] == (202, None, [])
        return
    assert answers["pybuild"] == answers["distribution"]
