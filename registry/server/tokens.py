"""Bearer token authentication, the validating side (Distribution's ``auth.token``).

The registry trusts JWTs signed by a token server ("Token Authentication Specification",
"Token Authentication Implementation"). A token is accepted when:

- its signing key is trusted, found as CNCF Distribution finds it, in this order: an
  ``x5c`` certificate chain in the header that leads to a certificate of
  ``rootcertbundle``; a ``jwk`` header (its own ``x5c`` chain, else its ``kid`` must be
  trusted); a ``kid`` naming a trusted key. Trusted keys are the JWKS file's keys by their
  ``kid`` and the bundle's certificate keys by their RFC 7638 thumbprint and by their
  libtrust key ID (what Distribution 2.x and docker_auth put in ``kid``);
- the signature verifies (RS*, PS*, ES*, EdDSA: PyJWT with ``cryptography``; HMAC is
  refused, a public key is no shared secret);
- ``iss`` is the configured issuer, ``aud`` (a string or a list) holds the configured
  service, ``exp`` is present and not past, ``nbf`` not ahead, each with 60 s of leeway
  (Distribution's); ``exp``, ``nbf`` and ``iat`` are JSON numbers;
- its ``access`` claim is well-formed (entries with a string ``type`` and ``name`` and a
  list of string ``actions``; anything else refuses the token whole, as Distribution's
  typed claims do) and covers what the request needs (:mod:`.access`).

Otherwise the answer is Distribution's: 401 ``UNAUTHORIZED`` whose ``detail`` lists the
access records, with ``WWW-Authenticate: Bearer realm=..,service=..,scope=..`` and
``error="invalid_token"`` or ``error="insufficient_scope"`` where that applies.

Verified tokens are remembered (bounded LRU, until they expire) so a push of many blobs
verifies its token once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import UNAUTHORIZED, RegistryError
from ..names import is_valid_name
from .access import Access, Grant, PullFilter, mount_source_access, required_access, scope_param
from .config import ConfigError, ServerConfig
from .routes import match
from .state import GRANT, VISIBLE

__all__ = [
    "LEEWAY",
    "MAX_TOKEN",
    "TokenAuth",
    "TokenError",
    "TokenVerifier",
    "Verified",
    "key_id",
    "libtrust_key_id",
    "load_trusted_keys",
    "token_auth_configured",
]

log = logging.getLogger("pybuild.registry")

LEEWAY = 60  # seconds, as Distribution allows for clock skew on exp and nbf
CACHE_ENTRIES = 4096
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_TOKEN = 16 * 1024  # bytes: a longer token is refused unread
_HOST = re.compile(r"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_MAX_CHAIN = 8

PublicKey = Any  # rsa/ec/ed25519 public key objects of cryptography
_PUBLIC_KEYS = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)


class TokenError(Exception):
    """A token that is not accepted; the message says why (for the log, not the client)."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a verified token says: who, what they may do, and until when."""

    subject: str
    issuer: str
    grant: Grant
    expires: float
    claims: dict[str, Any] = field(default_factory=dict)  # all of them, for the issuer's own


def token_auth_configured(config: ServerConfig) -> bool:
    return bool(
        config.auth_token_service
        or config.auth_token_issuer
        or config.auth_token_realm
        or config.auth_token_rootcertbundle
        or config.auth_token_jwks
        or config.auth_token_issue_key
        or config.auth_token_issue_policy
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(key: PublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key."""
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        members = {"e": _b64url(e), "kty": "RSA", "n": _b64url(n)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        size = (key.curve.key_size + 7) // 8
        point = key.public_numbers()
        crv = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name)
        if crv is None:
            raise TokenError(f"unsupported elliptic curve {key.curve.name}")
        members = {
            "crv": crv,
            "kty": "EC",
            "x": _b64url(point.x.to_bytes(size, "big")),
            "y": _b64url(point.y.to_bytes(size, "big")),
        }
    elif isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        members = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}
    else:
        raise TokenError(f"unsupported key type {type(key).__name__}")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def libtrust_key_id(key: PublicKey) -> str:
    """docker/libtrust's key ID: the first 240 bits of SHA-256(DER public key), base32, in
    groups of four joined by ``:`` (``ABCD:EFGH:...``)."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def _load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read auth.token.rootcertbundle {path}: {exc.strerror}") from exc
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(
            f"auth.token.rootcertbundle {path} holds no PEM certificate: {exc}"
        ) from exc


def _load_jwks(path: Path) -> dict[str, PublicKey]:
    try:
        doc = json.loads(path.read_text())
        keys = jwt.PyJWKSet.from_dict(doc).keys
    except OSError as exc:
        raise ConfigError(f"cannot read auth.token.jwks {path}: {exc.strerror}") from exc
    except (ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"auth.token.jwks {path} is not a usable JWK set: {exc}") from exc
    out: dict[str, PublicKey] = {}
    for key in keys:
        public = key.key.public_key() if hasattr(key.key, "public_key") else key.key
        if not isinstance(public, _PUBLIC_KEYS):
            raise ConfigError(f"auth.token.jwks {path}: key {key.key_id!r} is not an RSA, EC or Ed25519 key")
        if key.key_id:
            out[key.key_id] = public
    return out


def load_trusted_keys(
    rootcertbundle: Path | None, jwks: Path | None
) -> tuple[list[x509.Certificate], dict[str, PublicKey]]:
    """The root certificates and the trusted keys by key ID (see the module docstring)."""
    roots = _load_certificates(rootcertbundle) if rootcertbundle else []
    keys: dict[str, PublicKey] = {}
    for cert in roots:
        public = cert.public_key()
        try:
            keys[key_id(public)] = public
        except TokenError:
            continue
        keys[libtrust_key_id(public)] = public
    if jwks is not None:
        keys.update(_load_jwks(jwks))
    return roots, keys


class TokenVerifier:
    """Verifies tokens of one issuer for one service; see the module docstring."""

    def __init__(
        self,
        issuer: str,
        service: str,
        roots: list[x509.Certificate],
        keys: dict[str, PublicKey],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.roots = roots
        self.keys = dict(keys)
        self._root_der = {r.public_bytes(Encoding.DER) for r in roots}
        self._clock = clock
        self._cache: OrderedDict[str, Verified] = OrderedDict()

    def trust(self, key: PublicKey) -> str:
        """Trust ``key`` (by its RFC 7638 thumbprint, returned) from now on."""
        kid = key_id(key)
        self.keys[kid] = key
        return kid

    def verify(self, token: str) -> Verified:
        now = self._clock()
        hit = self._cache.get(token)
        if hit is not None:
            if now <= hit.expires + LEEWAY:
                self._cache.move_to_end(token)
                return hit
            del self._cache[token]
        verified = self._verify(token, now)
        self._cache[token] = verified
        while len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return verified

    def _verify(self, token: str, now: float) -> Verified:
        if len(token) > MAX_TOKEN:
            raise TokenError("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise TokenError(f"signing algorithm {str(alg)[:20]!r} is not accepted")
        key = self._signing_key(header, now)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.service,
                issuer=self.issuer,
                leeway=LEEWAY,
                options={"require": ["exp"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise TokenError(f"token rejected: {exc}") from None
        for name in ("exp", "nbf", "iat"):
            # PyJWT reads "123" as 123; a NumericDate is a JSON number (RFC 7519 2).
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise TokenError(f"{name} is not a number")
        if isinstance(claims.get("nbf"), (int, float)) and claims["nbf"] > now + LEEWAY:
            raise TokenError("token not valid yet")
        subject = claims.get("sub", "")
        if not isinstance(subject, str):
            raise TokenError("sub is not a string")
        return Verified(subject, self.issuer, _grant_of(claims.get("access")), float(claims["exp"]), claims)

    def _signing_key(self, header: dict[str, Any], now: float) -> PublicKey:
        x5c = header.get("x5c")
        if x5c is not None:
            return self._chain_key(x5c, now)
        jwk = header.get("jwk")
        if jwk is not None:
            if not isinstance(jwk, dict):
                raise TokenError("jwk header is not an object")
            if jwk.get("x5c") is not None:
                leaf = self._chain_key(jwk["x5c"], now)
                try:
                    own = jwt.PyJWK.from_dict(jwk).key
                except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as exc:
                    raise TokenError(f"jwk header is not a key: {exc}") from None
                if key_id(own) != key_id(leaf):
                    raise TokenError("the jwk header's key is not its certificate's key")
                return leaf
            trusted = self.keys.get(str(jwk.get("kid", "")))
            if trusted is None:
                raise TokenError("untrusted jwk header without a certificate chain")
            return trusted
        kid = header.get("kid")
        if isinstance(kid, str) and kid:
            trusted = self.keys.get(kid)
            if trusted is None:
                raise TokenError(f"token signed by an untrusted key (kid {kid[:80]!r})")
            return trusted
        raise TokenError("the token names no signing key (no x5c, jwk or kid header)")

    def _chain_key(self, x5c: Any, now: float) -> PublicKey:
        """The leaf's key if ``x5c`` (base64 DER, leaf first) chains to a root certificate."""
        if not isinstance(x5c, list) or not x5c or len(x5c) > _MAX_CHAIN:
            raise TokenError("x5c is not a certificate chain")
        try:
            chain = [
                x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c
            ]
        except (TypeError, ValueError, binascii.Error) as exc:
            raise TokenError(f"x5c holds an unreadable certificate: {exc}") from None
        moment = datetime.fromtimestamp(now, UTC)
        for cert in chain:
            if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
                raise TokenError(f"certificate {cert.subject.rfc4514_string()!r} is not valid now")
        try:
            for child, parent in itertools.pairwise(chain):
                child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise TokenError(f"x5c is not a chain: {exc}") from None
        top = chain[-1]
        if top.public_bytes(Encoding.DER) not in self._root_der:
            for root in self.roots:
                try:
                    top.verify_directly_issued_by(root)
                except (ValueError, TypeError, InvalidSignature):  # not this root: the next
                    continue
                break
            else:
                raise TokenError("x5c does not lead to a certificate of the root bundle")
        return chain[0].public_key()


def _grant_of(access: Any) -> Grant:
    """The ``access`` claim as a Grant; a malformed claim is refused whole."""
    if access is None:
        return Grant()
    if not isinstance(access, list) or len(access) > 1024:
        raise TokenError("access claim is not a list")
    out: list[Access] = []
    for item in access:
        if not isinstance(item, dict):
            raise TokenError("access claim entry is not an object")
        kind, name, actions = item.get("type"), item.get("name"), item.get("actions") or []
        if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise TokenError("access claim entry needs type, name and actions")
        if not all(isinstance(a, str) for a in actions):
            raise TokenError("access claim actions are not all strings")
        out.extend(Access(kind, name, a) for a in actions)
    return Grant(out)


def _local_address(request: web.Request) -> str:
    """``ip:port`` (``[ip]:port``) of this server's end of the request's connection."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return "localhost"
    ip, port = sockname[0], sockname[1]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def challenge_header(realm: str, service: str, wanted: Iterable[Access], error: str | None) -> str:
    value = f'Bearer realm="{realm}",service="{service}"'
    scope = scope_param(wanted)
    if scope:
        value += f',scope="{scope}"'
    if error:
        value += f',error="{error}"'
    return value


class TokenAuth:
    """Authorizes ``/v2`` requests by bearer token; see the module docstring.

    ``realm`` may be None when this server issues the tokens itself: the challenge then
    names this server's own token endpoint, at the address the client used.
    """

    def __init__(
        self, verifier: TokenVerifier, realm: str | None, token_path: str = "/token"
    ) -> None:
        self.verifier = verifier
        self.realm = realm
        self.token_path = token_path
        # Set by the built-in token server (token_server.build_token_auth): its issuer,
        # the check of its own tokens' subjects (revoked robots) and the catalog's filter.
        self.issuer: object | None = None
        self.subject_valid: Callable[[Verified], bool] = lambda verified: True
        self.catalog_filter: Callable[[str], PullFilter] | None = None

    @property
    def service(self) -> str:
        return self.verifier.service

    def realm_for(self, request: web.Request) -> str:
        if self.realm:
            return self.realm
        host = request.host
        if not _HOST.fullmatch(host):
            # Not a host[:port]: its quotes and commas would write the challenge's realm
            # (and more parameters). Name the address the request came in on instead.
            host = _local_address(request)
        return f"{request.scheme}://{host}{self.token_path}"

    def challenge(
        self, request: web.Request, wanted: list[Access], error: str | None, message: str
    ) -> RegistryError:
        header = challenge_header(self.realm_for(request), self.service, wanted, error)
        return UNAUTHORIZED(
            message, detail=[a.detail() for a in wanted] or None,
            headers={"WWW-Authenticate": header},
        )

    async def authorize(self, request: web.Request) -> str:
        """The token's subject if it allows the request; raises UNAUTHORIZED otherwise."""
        path = request.raw_path.split("?", 1)[0]
        route, _, params = match(request.method, path)
        needed = required_access(request.method, route.name, params.get("name"))
        wanted = list(needed)
        source = request.query.get("from") if "name" in params else None
        if source is not None and is_valid_name(source):
            wanted.append(mount_source_access(source))  # asked for, not required
        header = request.headers.get("Authorization") or ""
        scheme, _, raw = header.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            raise self.challenge(request, wanted, None, "authentication required")
        try:
            verified = self.verifier.verify(raw)
            if not self.subject_valid(verified):
                raise TokenError(f"subject {verified.subject!r} is no longer valid")
        except TokenError as exc:
            log.info("bearer token refused: %s", exc)
            raise self.challenge(request, wanted, "invalid_token", "invalid token") from None
        missing = verified.grant.missing(needed)
        if missing:
            raise self.challenge(
                request, wanted, "insufficient_scope",
                "access to the requested resource is not authorized: the token lacks "
                + ", ".join(a.scope() for a in missing),
            )
        request[GRANT] = verified.grant
        if route.name == "catalog" and self.catalog_filter is not None:
            request[VISIBLE] = self.catalog_filter(verified.subject)
        return verified.subject
