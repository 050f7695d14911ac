"""The built-in token server (``auth.token.issue``): ``GET``/``POST /token``.

It speaks Docker's "Token Authentication Specification" so that ``docker login``, podman,
skopeo, containerd and pybuild's client get tokens from the registry itself::

    GET /token?service=<service>&scope=repository:team/app:pull,push[&scope=...]
        Authorization: Basic <htpasswd user or robot+NAME : password>   (optional)
    POST /token   (OAuth2 form: grant_type=password, username, password, service, scope)

    200 {"token": "<JWT>", "access_token": "<JWT>", "expires_in": 300,
         "issued_at": "2026-01-01T00:00:00Z"}

Callers without credentials are anonymous. Wrong credentials are 401 (``WWW-Authenticate:
Basic``). The token grants the intersection of the scopes asked for and what the caller
may do: the policy (:mod:`.policy`) for users, the robot's own scopes for robots
(:mod:`.robots`). Being granted less than asked is not an error (spec). ``registry:
catalog:*`` is granted to every caller; the catalog then lists only the repositories the
caller may pull.

Tokens are ES256 JWTs (RS256 for an RSA key, EdDSA for Ed25519) signed with the key at
``auth.token.issue.key``, created (P-256, mode 0600) when missing; ``kid`` is the key's
RFC 7638 thumbprint (what CNCF Distribution 3 looks up for a certificate of its
``rootcertbundle``, or in a JWKS holding the public key under that ``kid``; Distribution
2.8 has no ``jwks`` and looks certificates up by their libtrust key ID, so it does not
take these tokens).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import secrets
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from ..errors import UNAUTHORIZED, UNSUPPORTED, RegistryError
from .access import CATALOG, Access, Grant, PullFilter, ScopeError, parse_scopes
from .auth import BasicAuth
from .config import ConfigError, ServerConfig
from .expect import send_continue
from .policy import Policy, WatchedFile, parse_policy
from .robots import PREFIX, Robot, RobotTable, parse_robots, robots_path
from .state import REGISTRY, USER
from .tokens import MAX_TOKEN, TokenAuth, TokenVerifier, Verified, load_trusted_keys

__all__ = [
    "DEFAULT_ISSUER",
    "DEFAULT_SERVICE",
    "Issuer",
    "build_token_auth",
    "load_signing_key",
    "token_endpoint",
]

DEFAULT_SERVICE = "pybuild-registry"
DEFAULT_ISSUER = "pybuild-token-server"
MIN_TTL = 60.0  # the spec: never less than 60 s to live
MAX_TTL = 86400.0
_MAX_FORM = 64 * 1024
ROBOT_CLAIM = "pybuild_robot_created"


def _create_signing_key(path: Path) -> None:
    """A new P-256 key at ``path`` (mode 0600), there whole or not at all: written to a
    temporary file, then linked into place. Another process that made one meanwhile (a
    replica starting at the same moment) wins, and its key is used: never a file it has
    not finished writing, nor one a full disk cut short."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError as exc:
        raise ConfigError(
            f"cannot create auth.token.issue.key {path}: {exc.strerror or exc}; "
            "make its directory writable, or give an existing key"
        ) from exc


def load_signing_key(path: Path) -> Any:
    """The private key in PEM at ``path``; a new P-256 key is written there if missing."""
    if not path.exists():
        _create_signing_key(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read auth.token.issue.key {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"auth.token.issue.key {path} is not an unencrypted PEM private key: {exc}"
        ) from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ConfigError(f"auth.token.issue.key {path}: use an EC (P-256), RSA or Ed25519 key")
    return key


def _algorithm(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]


@dataclass
class Issuer:
    """Signs tokens for the callers it authenticates, within the policy."""

    key: Any
    kid: str
    issuer: str
    service: str
    ttl: float
    users: BasicAuth | None
    policy: WatchedFile[Policy] | None
    robots: WatchedFile[dict[str, Robot]]

    def robot_table(self) -> RobotTable:
        return RobotTable(self.robots.current())

    def actions(self, subject: str | None, repo: str) -> set[str]:
        """What ``subject`` (None: anonymous) may do to ``repo`` now."""
        if subject is not None and subject.startswith(PREFIX):
            robot = self.robot_table().get(subject)
            return robot.actions(repo) if robot is not None else set()
        if self.policy is None:
            return {"pull", "push", "delete"} if subject is not None else set()
        return self.policy.current().actions(subject, repo)

    def grant(self, subject: str | None, wanted: list[Access]) -> Grant:
        """The intersection of ``wanted`` and what ``subject`` may do. ``*`` asks for every
        action (skopeo asks it to delete): the caller gets those it may take."""
        granted = []
        for access in wanted:
            if access == CATALOG:
                granted.append(access)
            elif access.type == "repository":
                allowed = self.actions(subject, access.name)
                if access.action == "*" and not allowed >= {"pull", "push", "delete"}:
                    granted.extend(Access(access.type, access.name, a) for a in sorted(allowed))
                elif access.action == "*" or access.action in allowed:
                    granted.append(access)
        return Grant(granted)

    def subject_valid(self, verified: Verified) -> bool:
        """False for a robot that was revoked or expired since its token was issued, or
        replaced (``robot create`` again: a new secret, new scopes): the tokens of the
        robot it replaced (another creation time) stop working with its secret."""
        if not verified.subject.startswith(PREFIX):
            return True
        robot = self.robot_table().get(verified.subject)
        return robot is not None and verified.claims.get(ROBOT_CLAIM) == robot.created

    def sign(self, subject: str, grant: Grant, now: float) -> tuple[str, int]:
        expires = now + self.ttl
        robot = self.robot_table().get(subject) if subject.startswith(PREFIX) else None
        if robot is not None:
            expires = min(expires, robot.expires)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": int(expires),
            "nbf": int(now),
            "iat": int(now),
            "jti": secrets.token_urlsafe(16),
            "access": grant.claim(),
        }
        if robot is not None:
            claims[ROBOT_CLAIM] = robot.created  # which robot of that name (see subject_valid)
        token = jwt.encode(claims, self.key, algorithm=_algorithm(self.key), headers={"kid": self.kid})
        return token, max(int(expires - now), 0)


class PolicyFilter(PullFilter):
    """The catalog's filter for a token of this server: what its subject may pull now."""

    def __init__(self, issuer: Issuer, subject: str) -> None:
        self.issuer = issuer
        self.subject = subject or None

    def may_pull(self, repo: str) -> bool:
        return "pull" in self.issuer.actions(self.subject, repo)


def build_token_auth(config: ServerConfig, basic: BasicAuth | None, storage: Path) -> TokenAuth:
    """The token authorizer ``config`` describes (and its issuer when it issues tokens);
    ConfigError says what is missing or unusable."""
    issuing = config.auth_token_issue_key is not None
    service = config.auth_token_service or (DEFAULT_SERVICE if issuing else None)
    issuer_name = config.auth_token_issuer or (DEFAULT_ISSUER if issuing else None)
    if not issuing:
        if config.auth_token_issue_policy is not None:
            raise ConfigError(
                "auth.token.issue.policy is the policy of the built-in token server, which "
                "needs auth.token.issue.key (the key that signs its tokens; made if missing)"
            )
        if basic is not None:
            raise ConfigError(
                "auth.htpasswd with an external token server (auth.token without issue): "
                "the registry takes only that server's tokens, so the htpasswd users could "
                "not log in here; give the users to the token server and drop auth.htpasswd, "
                "or issue tokens here (auth.token.issue.key)"
            )
        missing = [
            k for k, v in (
                ("auth.token.realm", config.auth_token_realm),
                ("auth.token.service", service),
                ("auth.token.issuer", issuer_name),
            ) if not v
        ]
        if missing:
            raise ConfigError(
                f"token auth needs {', '.join(missing)} (or auth.token.issue to issue tokens itself)"
            )
        if config.auth_token_rootcertbundle is None and config.auth_token_jwks is None:
            raise ConfigError(
                "token auth needs auth.token.rootcertbundle or auth.token.jwks "
                "(the token server's signing keys)"
            )
    assert service is not None and issuer_name is not None
    roots, keys = load_trusted_keys(config.auth_token_rootcertbundle, config.auth_token_jwks)
    verifier = TokenVerifier(issuer_name, service, roots, keys)
    auth = TokenAuth(verifier, config.auth_token_realm)
    if issuing:
        assert config.auth_token_issue_key is not None
        if not MIN_TTL <= config.auth_token_issue_ttl <= MAX_TTL:
            raise ConfigError(
                f"auth.token.issue.ttl must be {MIN_TTL:.0f} to {MAX_TTL:.0f} seconds, "
                f"got {config.auth_token_issue_ttl:g}"
            )
        key = load_signing_key(config.auth_token_issue_key)
        kid = verifier.trust(key.public_key())
        policy = None
        if config.auth_token_issue_policy is not None:
            if not config.auth_token_issue_policy.is_file():
                raise ConfigError(f"auth.token.issue.policy {config.auth_token_issue_policy} does not exist")
            try:
                policy = WatchedFile(config.auth_token_issue_policy, parse_policy, "access policy")
            except (OSError, ValueError) as exc:  # PolicyError, or not UTF-8
                raise ConfigError(str(exc)) from exc
        try:
            robots = WatchedFile(robots_path(storage), parse_robots, "robots file", missing_ok=True)
        except (OSError, ValueError) as exc:  # RobotError, or not UTF-8
            raise ConfigError(str(exc)) from exc
        issuer = Issuer(key, kid, issuer_name, service, config.auth_token_issue_ttl, basic, policy, robots)
        auth.issuer = issuer
        auth.subject_valid = issuer.subject_valid
        auth.catalog_filter = lambda subject: PolicyFilter(issuer, subject)
    return auth


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise UNAUTHORIZED(f"unsupported authorization scheme {scheme[:32]!r}: use Basic")
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        raise UNAUTHORIZED("malformed basic credentials") from None
    if not sep:
        raise UNAUTHORIZED("malformed basic credentials")
    return user, password


async def _authenticate(issuer: Issuer, user: str, password: str) -> str:
    if user.startswith(PREFIX):
        if issuer.robot_table().check(user, password) is None:
            raise UNAUTHORIZED("invalid robot name or secret, or the robot expired or was revoked")
        return user
    if issuer.users is None:
        raise UNAUTHORIZED("this token server has no users (auth.htpasswd); robots log in as robot+NAME")
    header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return await issuer.users.authenticate(header)


async def _read_form(request: web.Request) -> bytes:
    """The whole form body (up to the limit): it may come in several reads, and a client
    that stops sending gets ``http.body_timeout`` seconds, as an upload body does."""
    await send_continue(request)
    stall = request.app[REGISTRY].config.http_body_timeout or None
    body = bytearray()
    try:
        async with asyncio.timeout(stall):
            while len(body) <= _MAX_FORM:
                chunk = await request.content.read(_MAX_FORM + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        raise UNSUPPORTED(f"the token request form did not arrive within {stall:g} s "
                          f"(after {len(body)} bytes)", status=400) from None
    if len(body) > _MAX_FORM:
        raise UNSUPPORTED("token request form too large", status=413)
    return bytes(body)


async def token_endpoint(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY]
    issuer = getattr(reg.auth, "issuer", None)
    if not isinstance(issuer, Issuer):
        raise UNSUPPORTED("this registry does not issue tokens (auth.token.issue)", status=404)
    if request.method not in ("GET", "POST"):
        raise UNSUPPORTED(f"{request.method} is not supported on /token; use GET or POST",
                          headers={"Allow": "GET, POST"})
    params: list[tuple[str, str]] = list(request.query.items())
    user: str | None = None
    password: str | None = None
    if request.method == "POST":
        body = await _read_form(request)
        try:
            params += urllib.parse.parse_qsl(body.decode(), max_num_fields=256)
        except (UnicodeDecodeError, ValueError):
            raise UNSUPPORTED("token request form is not application/x-www-form-urlencoded", status=400) from None
        fields = dict(params)
        grant_type = fields.get("grant_type", "password")
        if grant_type != "password":
            raise UNSUPPORTED(f"unsupported grant_type {grant_type[:32]!r}: use password", status=400)
        if "username" in fields:
            user, password = fields["username"], fields.get("password", "")
    header = request.headers.get("Authorization")
    if user is None and header:
        user, password = _basic_credentials(header)
    try:
        subject = None if user is None else await _authenticate(issuer, user, password or "")
    except RegistryError as exc:
        exc.headers["WWW-Authenticate"] = f'Basic realm="{issuer.service}"'
        raise
    service = dict(params).get("service")
    if service is not None and service != issuer.service:
        raise UNSUPPORTED(f"this token server issues tokens for {issuer.service!r}, not {service[:64]!r}",
                          status=400)
    try:
        wanted = parse_scopes(v for k, v in params if k == "scope")
    except ScopeError as exc:
        raise UNSUPPORTED(str(exc), status=400) from None
    if subject:
        request[USER] = subject  # for the access log
    now = time.time()
    grant = issuer.grant(subject, wanted)
    token, expires_in = issuer.sign(subject or "", grant, now)
    if len(token) > MAX_TOKEN:  # the registry would refuse it: say so here
        raise UNSUPPORTED(
            f"the scopes asked for make a token of {len(token)} bytes, over the {MAX_TOKEN} "
            "a token may have: ask for fewer scopes at once", status=400,
        )
    issued_at = datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return web.json_response(
        {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at},
        headers={"Cache-Control": "no-store"},
    )
