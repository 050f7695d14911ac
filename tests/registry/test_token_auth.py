"""Bearer tokens from an external token server (Distribution's ``auth.token``): keys found
by kid, JWKS and x5c; expiry, audience, issuer; every action allowed and denied; mounts;
the catalog. A refused request changes nothing."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import bcrypt
import jwt
import pytest
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import Digest
from registry.server.config import ConfigError
from registry.server.tokens import TokenError, TokenVerifier, key_id, libtrust_key_id
from testkit.tokens import ISSUER, REALM, SERVICE, Keys, bearer, make_keys, sign, x5c

from .helpers import error_codes, push_blob, push_image

REPO = "team/app"
OTHER = "team/other"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


def kid_token(keys: Keys, *scopes: str, **claims: object) -> str:
    """Signed by the bundle's CA key, named by its RFC 7638 thumbprint."""
    return sign(keys.ca_key, scopes, headers={"kid": key_id(keys.ca_key.public_key())}, **claims)


ALL = (f"repository:{REPO}:*", f"repository:{OTHER}:*", "repository:src/repo:*", "registry:catalog:*")


@pytest.fixture
async def client(make_client, keys: Keys) -> TestClient:
    c = await make_client(**keys.config())
    c.session.headers["Authorization"] = f"Bearer {kid_token(keys, *ALL)}"
    return c


def _challenge(resp) -> dict[str, str]:
    header = resp.headers["WWW-Authenticate"]
    assert header.startswith("Bearer ")
    out = {}
    for part in header[len("Bearer "):].split('",'):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip('"')
    return out


async def test_without_a_token_the_challenge_names_realm_service_and_scope(client, keys):
    resp = await client.get(f"/v2/{REPO}/tags/list", headers={"Authorization": ""})
    assert resp.status == 401
    assert _challenge(resp) == {"realm": REALM, "service": SERVICE, "scope": f"repository:{REPO}:pull"}
    body = await resp.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    assert body["errors"][0]["detail"] == [{"Type": "repository", "Class": "", "Name": REPO, "Action": "pull"}]
    base = await client.get("/v2/", headers={"Authorization": ""})
    assert base.status == 401 and "scope" not in _challenge(base)
    push = await client.post(f"/v2/{REPO}/blobs/uploads/", headers={"Authorization": ""})
    assert _challenge(push)["scope"] == f"repository:{REPO}:pull,push"
    # A mount also asks for pull on its source, so that clients fetch a token with it.
    mount = await client.post(f"/v2/{REPO}/blobs/uploads/?mount=sha256:{'a' * 64}&from=src/repo",
                              headers={"Authorization": ""})
    assert _challenge(mount)["scope"] == f"repository:{REPO}:pull,push repository:src/repo:pull"
    odd = await client.post(f'/v2/{REPO}/blobs/uploads/?mount=sha256:{"a" * 64}&from=a"b',
                            headers={"Authorization": ""})
    assert _challenge(odd)["scope"] == f"repository:{REPO}:pull,push"  # not a name: not echoed


async def test_basic_credentials_are_not_a_token(client):
    resp = await client.get("/v2/", headers={"Authorization": "Basic YWxpY2U6cHc="})
    assert resp.status == 401 and "error" not in _challenge(resp)


async def test_any_valid_token_opens_the_base_endpoint(client, keys):
    resp = await client.get("/v2/", headers=bearer(kid_token(keys)))
    assert resp.status == 200


# --- every action, allowed and denied ---------------------------------------------------
async def _seed(client: TestClient) -> tuple[Digest, bytes]:
    return await push_image(client, REPO, "v1", [b"layer one"])


async def _state(client: TestClient) -> tuple[int, list[str], int, int]:
    tags = await client.get(f"/v2/{REPO}/tags/list")
    new_blob = await client.head(f"/v2/{REPO}/blobs/{Digest.of(b'new layer')}")
    old_blob = await client.head(f"/v2/{REPO}/blobs/{Digest.of(b'layer one')}")
    manifest = await client.get(f"/v2/{REPO}/manifests/v1")
    return manifest.status, (await tags.json())["tags"], new_blob.status, old_blob.status


LAYER = Digest.of(b"layer one")
OPERATIONS = {
    # name: (method, path, needed action(s), expected status when allowed, body)
    "pull-manifest": ("GET", f"/v2/{REPO}/manifests/v1", "pull", 200, None),
    "pull-blob": ("GET", f"/v2/{REPO}/blobs/{LAYER}", "pull", 200, None),
    "pull-tags": ("GET", f"/v2/{REPO}/tags/list", "pull", 200, None),
    "push-blob": ("POST", f"/v2/{REPO}/blobs/uploads/?digest={Digest.of(b'new layer')}", "pull,push", 201,
                  b"new layer"),
    "push-manifest": ("PUT", f"/v2/{REPO}/manifests/v2", "pull,push", 201, "manifest"),
    "delete-manifest": ("DELETE", f"/v2/{REPO}/manifests/v1", "delete", 202, None),
    "delete-blob": ("DELETE", f"/v2/{REPO}/blobs/{LAYER}", "delete", 202, None),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("granted", ["exact", "star", "other-actions", "other-repo", "none"])
async def test_every_action_allowed_and_denied(client, keys, operation, granted):
    _, manifest = await _seed(client)
    before = await _state(client)
    method, path, needed, ok, body = OPERATIONS[operation]
    scopes = {
        "exact": (f"repository:{REPO}:{needed}",),
        "star": (f"repository:{REPO}:*",),
        "other-actions": (f"repository:{REPO}:{'push' if needed == 'pull' else 'pull'}",),
        "other-repo": (f"repository:{OTHER}:*",),
        "none": (),
    }[granted]
    headers = bearer(kid_token(keys, *scopes))
    if body == "manifest":
        body = manifest
        headers["Content-Type"] = "application/vnd.oci.image.manifest.v1+json"
    resp = await client.request(method, path, data=body, headers=headers)
    if granted in ("exact", "star"):
        assert resp.status == ok, await resp.text()
        return
    assert resp.status == 401, await resp.text()
    assert await error_codes(resp) == ["UNAUTHORIZED"]
    challenge = _challenge(resp)
    assert challenge["error"] == "insufficient_scope"
    assert challenge["scope"] == f"repository:{REPO}:{needed}"
    assert await _state(client) == before  # nothing changed


async def test_options_needs_a_valid_token_and_no_scope_as_in_distribution(client, keys):
    """OPTIONS (what a browser asks before a cross-origin request) reads and changes
    nothing: a token for another repository will do, as in Distribution; no token does not."""
    await _seed(client)
    for path in (f"/v2/{REPO}/tags/list", f"/v2/{REPO}/blobs/uploads/", "/v2/_catalog"):
        resp = await client.options(path, headers=bearer(kid_token(keys, f"repository:{OTHER}:pull")))
        assert resp.status == 200, await resp.text()
        assert resp.headers["Allow"]
        resp = await client.options(path, headers={"Authorization": ""})
        assert resp.status == 401
        assert "scope" not in _challenge(resp)


async def test_a_push_needs_pull_too_as_in_distribution(client, keys):
    resp = await client.post(
        f"/v2/{REPO}/blobs/uploads/", headers=bearer(kid_token(keys, f"repository:{REPO}:push"))
    )
    assert resp.status == 401 and _challenge(resp)["error"] == "insufficient_scope"


# --- mounts -----------------------------------------------------------------------------
async def test_mount_needs_pull_on_the_source(client, keys):
    digest = await push_blob(client, "src/repo", b"shared layer")
    target = f"/v2/{REPO}/blobs/uploads/?mount={digest}&from=src/repo"
    no_source = bearer(kid_token(keys, f"repository:{REPO}:pull,push"))
    resp = await client.post(target, headers=no_source)
    assert resp.status == 202  # an ordinary upload session, not a mount
    assert (await client.head(f"/v2/{REPO}/blobs/{digest}")).status == 404
    # Without from=, the blob is not found in a repository the caller may read either.
    resp = await client.post(f"/v2/{REPO}/blobs/uploads/?mount={digest}", headers=no_source)
    assert resp.status == 202
    assert (await client.head(f"/v2/{REPO}/blobs/{digest}")).status == 404

    with_source = bearer(kid_token(keys, f"repository:{REPO}:pull,push", "repository:src/repo:pull"))
    resp = await client.post(target, headers=with_source)
    assert resp.status == 201
    assert (await client.head(f"/v2/{REPO}/blobs/{digest}")).status == 200


async def test_mount_into_a_repository_without_push_is_refused(client, keys):
    digest = await push_blob(client, "src/repo", b"shared layer")
    token = kid_token(keys, f"repository:{REPO}:pull", "repository:src/repo:pull")
    resp = await client.post(f"/v2/{REPO}/blobs/uploads/?mount={digest}&from=src/repo", headers=bearer(token))
    assert resp.status == 401
    assert (await client.head(f"/v2/{REPO}/blobs/{digest}")).status == 404


# --- token validity ---------------------------------------------------------------------
def _invalid_tokens(keys: Keys) -> dict[str, str]:
    now = int(time.time())
    scope = (f"repository:{REPO}:pull",)
    kid = {"kid": key_id(keys.ca_key.public_key())}
    return {
        "expired": kid_token(keys, *scope, exp=now - 120),
        "no-exp": kid_token(keys, *scope, exp=None),
        "not-yet": kid_token(keys, *scope, nbf=now + 600),
        "wrong-audience": kid_token(keys, *scope, aud="elsewhere"),
        "wrong-issuer": kid_token(keys, *scope, iss="someone"),
        "badly-signed": sign(keys.stranger, scope, headers=kid),
        "unknown-kid": sign(keys.stranger, scope, headers={"kid": "nobody"}),
        "no-key-named": sign(keys.ca_key, scope),
        "untrusted-x5c": sign(keys.stranger, scope, headers={"x5c": x5c(keys.ca_cert)}),
        "hmac": sign("secret-secret-secret-secret-secret!", scope, alg="HS256", headers=kid),
        "malformed": "not.a.token",
        "garbage": "%%%",
        "tampered": kid_token(keys, *scope)[:-4] + "AAAA",
        "access-not-a-list": kid_token(keys, access={"type": "repository"}),
        # Malformed as CNCF Distribution reads them (its claims are typed): refused whole,
        # not read leniently into something that grants.
        "exp-a-string": kid_token(keys, *scope, exp=str(now + 300)),
        "nbf-a-string": kid_token(keys, *scope, nbf=str(now)),
        "action-not-a-string": kid_token(
            keys, access=[{"type": "repository", "name": REPO, "actions": [1, "pull"]}]
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["expired", "no-exp", "not-yet", "wrong-audience", "wrong-issuer", "badly-signed",
     "unknown-kid", "no-key-named", "untrusted-x5c", "hmac", "malformed", "garbage",
     "tampered", "access-not-a-list", "exp-a-string", "nbf-a-string", "action-not-a-string"],
)
async def test_invalid_tokens_are_401_invalid_token(client, keys, case):
    token = _invalid_tokens(keys)[case]
    resp = await client.get(f"/v2/{REPO}/tags/list", headers=bearer(token))
    assert resp.status == 401, await resp.text()
    assert await error_codes(resp) == ["UNAUTHORIZED"]
    assert _challenge(resp)["error"] == "invalid_token"


async def test_expiry_and_not_before_allow_a_minute_of_clock_skew(client, keys):
    await _seed(client)
    now = int(time.time())
    scope = f"repository:{REPO}:pull"
    for token in (kid_token(keys, scope, exp=now - 30), kid_token(keys, scope, nbf=now + 30)):
        assert (await client.get(f"/v2/{REPO}/tags/list", headers=bearer(token))).status == 200


@pytest.mark.parametrize("how", ["thumbprint", "libtrust", "jwks", "x5c", "audience-list"])
async def test_every_way_of_naming_the_key(client, keys, how):
    await _seed(client)
    scope = (f"repository:{REPO}:pull",)
    token = {
        "thumbprint": lambda: kid_token(keys, *scope),
        "libtrust": lambda: sign(keys.ca_key, scope, headers={"kid": libtrust_key_id(keys.ca_key.public_key())}),
        "jwks": lambda: sign(keys.jwks_key, scope, headers={"kid": "jwks-1"}),
        "x5c": lambda: sign(keys.leaf_key, scope, alg="RS256", headers={"x5c": x5c(keys.leaf_cert, keys.ca_cert)}),
        "audience-list": lambda: kid_token(keys, *scope, aud=["other", SERVICE]),
    }[how]()
    resp = await client.get(f"/v2/{REPO}/tags/list", headers=bearer(token))
    assert resp.status == 200, await resp.text()


async def test_x5c_leaf_alone_chains_to_the_bundle(client, keys):
    await _seed(client)
    token = sign(keys.leaf_key, (f"repository:{REPO}:pull",), alg="RS256", headers={"x5c": x5c(keys.leaf_cert)})
    assert (await client.get(f"/v2/{REPO}/tags/list", headers=bearer(token))).status == 200


# --- catalog ----------------------------------------------------------------------------
async def test_catalog_needs_the_registry_catalog_scope(client, keys):
    await _seed(client)
    resp = await client.get("/v2/_catalog", headers=bearer(kid_token(keys, f"repository:{REPO}:*")))
    assert resp.status == 401
    assert _challenge(resp)["scope"] == "registry:catalog:*"
    resp = await client.get("/v2/_catalog", headers=bearer(kid_token(keys, "registry:catalog:*")))
    assert resp.status == 200
    assert (await resp.json())["repositories"] == [REPO]


# --- configuration ----------------------------------------------------------------------
async def test_token_config_must_name_keys_and_parties(make_client, keys, tmp_path):
    config = keys.config()
    for missing in ("auth_token_realm", "auth_token_service", "auth_token_issuer"):
        with pytest.raises(ConfigError, match=missing.replace("auth_token_", "auth.token.")):
            await make_client(**{**config, missing: None})
    with pytest.raises(ConfigError, match="rootcertbundle or auth.token.jwks"):
        await make_client(**{**config, "auth_token_rootcertbundle": None, "auth_token_jwks": None})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keys": [{"kty": "nope"}]}))
    with pytest.raises(ConfigError, match="jwks"):
        await make_client(**{**config, "auth_token_jwks": bad})
    with pytest.raises(ConfigError, match="rootcertbundle"):
        await make_client(**{**config, "auth_token_rootcertbundle": bad})


async def test_settings_that_would_do_nothing_are_refused(make_client, keys, tmp_path):
    """A policy without the token server it belongs to, or htpasswd users beside an
    external token server, would be ignored: the registry would then run with no policy
    (every htpasswd user may do everything) or with users who cannot log in."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    policy = tmp_path / "access.yaml"
    policy.write_text('rules: [{repositories: ["team/*"], users: [alice], actions: [pull]}]\n')
    with pytest.raises(ConfigError, match="auth.token.issue.policy .* needs auth.token.issue.key"):
        await make_client(auth_htpasswd=htpasswd, auth_token_issue_policy=policy)
    with pytest.raises(ConfigError, match="auth.htpasswd with an external token server"):
        await make_client(auth_htpasswd=htpasswd, **keys.config())




def _jwk(public_key, **extra) -> dict:
    algorithm = jwt.algorithms.RSAAlgorithm if isinstance(public_key, rsa.RSAPublicKey) else jwt.algorithms.ECAlgorithm
    return {**json.loads(algorithm.to_jwk(public_key)), **extra}


@pytest.mark.parametrize("case", ["chain", "trusted-kid", "chain-of-another-key", "untrusted"])
async def test_jwk_header(client, keys, case):
    await _seed(client)
    scope = (f"repository:{REPO}:pull",)
    leaf_jwk = _jwk(keys.leaf_key.public_key(), x5c=x5c(keys.leaf_cert, keys.ca_cert))
    token, ok = {
        "chain": (sign(keys.leaf_key, scope, alg="RS256", headers={"jwk": leaf_jwk}), True),
        "trusted-kid": (sign(keys.jwks_key, scope, headers={"jwk": _jwk(keys.jwks_key.public_key(), kid="jwks-1")}),
                        True),
        "chain-of-another-key": (
            sign(keys.stranger, scope, headers={"jwk": _jwk(keys.stranger.public_key(), x5c=leaf_jwk["x5c"])}),
            False),
        "untrusted": (sign(keys.stranger, scope, headers={"jwk": _jwk(keys.stranger.public_key(), kid="x")}), False),
    }[case]
    resp = await client.get(f"/v2/{REPO}/tags/list", headers=bearer(token))
    assert resp.status == (200 if ok else 401), await resp.text()


async def test_eddsa_and_es384_keys_from_a_jwks(make_client, keys, tmp_path):
    ed = ed25519.Ed25519PrivateKey.generate()
    p384 = ec.generate_private_key(ec.SECP384R1())
    jwks = tmp_path / "more.json"
    jwks.write_text(json.dumps({"keys": [
        {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed.public_key())), "kid": "ed-1"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(p384.public_key())), "kid": "p384"},
    ]}))
    client = await make_client(**{**keys.config(), "auth_token_jwks": jwks})
    scope = ("registry:catalog:*",)
    for token in (sign(ed, scope, alg="EdDSA", headers={"kid": "ed-1"}),
                  sign(p384, scope, alg="ES384", headers={"kid": "p384"})):
        assert (await client.get("/v2/_catalog", headers=bearer(token))).status == 200
    # The algorithm must suit the key: an EdDSA key named for ES256 is refused.
    wrong = sign(ed, scope, alg="EdDSA", headers={"kid": "p384"})
    assert (await client.get("/v2/_catalog", headers=bearer(wrong))).status == 401


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_HEADER_KEYS = st.sampled_from(["alg", "kid", "x5c", "jwk", "typ"])
_CLAIM_KEYS = st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "access"])


def _segment(doc: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()


@settings(max_examples=300, deadline=None)
@given(
    token=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda h, c, sig: f"{_segment(h)}.{_segment(c)}.{sig}",
            st.dictionaries(_HEADER_KEYS, _json, max_size=4).map(lambda h: {"alg": "ES256", **h})
            | st.fixed_dictionaries({"alg": st.just("ES256"), "x5c": st.lists(st.text(max_size=20) | _json)})
            | st.fixed_dictionaries({"alg": st.just("ES256"), "jwk": _json | st.dictionaries(
                st.sampled_from(["kty", "crv", "x", "y", "kid", "x5c"]), _json)})
            | _json,
            st.dictionaries(_CLAIM_KEYS, _json, max_size=6) | _json,
            st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", max_size=40),
        ),
    )
)
def test_any_token_is_verified_or_refused_never_an_error(token: str) -> None:
    try:
        verified = _FUZZ_VERIFIER.verify(token)
    except TokenError:
        return
    raise AssertionError(f"an unsigned token was accepted: {verified}")


_FUZZ_KEY = ec.generate_private_key(ec.SECP256R1())
_FUZZ_VERIFIER = TokenVerifier(ISSUER, SERVICE, [], {"k": _FUZZ_KEY.public_key(), "": _FUZZ_KEY.public_key()})
