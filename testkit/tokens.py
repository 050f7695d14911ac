"""A test token server's key material, shared by the token tests: a root CA, a leaf
certificate it signed, a JWKS, and a function that signs JWTs the way a token server does."""

from __future__ import annotations

import base64
import datetime
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = ["ISSUER", "REALM", "SERVICE", "Keys", "access", "bearer", "make_keys", "sign", "x5c"]

ISSUER = "auth.test"
SERVICE = "registry.test"
REALM = "https://auth.test/token"


def _cert(subject: str, key: Any, issuer_name: str, issuer_key: Any, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@dataclass
class Keys:
    """``ca_key`` signs with its certificate in the bundle; ``leaf_key`` (RSA) has a
    certificate from the CA (for x5c); ``jwks_key`` is in the JWKS as ``jwks-1``;
    ``stranger`` is trusted by nobody."""

    ca_key: Any
    ca_cert: x509.Certificate
    leaf_key: Any
    leaf_cert: x509.Certificate
    jwks_key: Any
    stranger: Any
    bundle: Path
    jwks: Path

    def config(self) -> dict[str, Any]:
        return {
            "auth_token_realm": REALM,
            "auth_token_service": SERVICE,
            "auth_token_issuer": ISSUER,
            "auth_token_rootcertbundle": self.bundle,
            "auth_token_jwks": self.jwks,
        }


def make_keys(directory: Path) -> Keys:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _cert("test token CA", ca_key, "test token CA", ca_key, ca=True)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_cert = _cert("token signer", leaf_key, "test token CA", ca_key, ca=False)
    jwks_key = ec.generate_private_key(ec.SECP256R1())
    bundle = directory / "ca.pem"
    bundle.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(jwks_key.public_key()))
    jwk.update({"kid": "jwks-1", "use": "sig", "alg": "ES256"})
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    return Keys(ca_key, ca_cert, leaf_key, leaf_cert, jwks_key,
                ec.generate_private_key(ec.SECP256R1()), bundle, jwks)


def access(*scopes: str) -> list[dict[str, Any]]:
    """``"repository:a/b:pull,push"`` ... -> the ``access`` claim."""
    out = []
    for scope in scopes:
        kind, rest = scope.split(":", 1)
        name, actions = rest.rsplit(":", 1)
        out.append({"type": kind, "name": name, "actions": actions.split(",")})
    return out


def sign(
    key: Any,
    scopes: tuple[str, ...] = (),
    *,
    alg: str = "ES256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": ISSUER, "sub": "tester", "aud": SERVICE,
        "exp": now + 300, "nbf": now, "iat": now, "jti": str(now),
        "access": access(*scopes),
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm=alg, headers=headers or {})


def x5c(*certs: x509.Certificate) -> list[str]:
    return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certs]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
