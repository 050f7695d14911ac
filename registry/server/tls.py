"""The registry's TLS: the server context made from ``tls.cert`` / ``tls.key`` (Distribution's
``http.tls.certificate`` / ``key``), ``tls.clientcas`` (``http.tls.clientcas``: client
certificates are then required, and must be signed by one of these CAs, as Distribution's
``RequireAndVerifyClientCert``) and ``tls.minimum`` (``http.tls.minimumtls``: ``tls1.2``,
the default, or ``tls1.3``).

The certificate file holds the server's certificate then its intermediates (a chain
file, as Distribution and nginx take it); each failure to load says which file is
wrong and how, at start rather than at the first handshake.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

__all__ = ["MINIMUM_VERSIONS", "parse_client_cas", "parse_minimum_tls", "server_context"]

MINIMUM_VERSIONS = {"tls1.2": ssl.TLSVersion.TLSv1_2, "tls1.3": ssl.TLSVersion.TLSv1_3}


def parse_client_cas(value: Any) -> tuple[Path, ...]:
    """``tls.clientcas``: a list of CA files (a comma-separated list in the environment)."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Path) for v in value):
        raise ValueError(f"expected a list of CA certificate files, got {value!r}")
    return tuple(Path(str(v).strip()).expanduser() for v in value)


def parse_minimum_tls(value: Any) -> str:
    """``tls.minimum``: the oldest TLS version accepted."""
    text = str(value).strip().lower()
    if text not in MINIMUM_VERSIONS:
        raise ValueError(f"pybuild accepts {' or '.join(MINIMUM_VERSIONS)} (TLS 1.0 and 1.1 are "
                         f"broken), got {value!r}")
    return text


def _no_password() -> bytes:
    raise ValueError("encrypted")  # OpenSSL would otherwise ask on the terminal


def _has(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except OSError:
        return True  # load_cert_chain says why it cannot be read


def server_context(cert: Path, key: Path, client_cas: tuple[Path, ...] = (),
                   minimum: str = "tls1.2") -> ssl.SSLContext:
    """The TLS context ``pybuild serve`` listens with; ValueError naming the file at fault."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = MINIMUM_VERSIONS[minimum]
    if not _has(cert, b"-----BEGIN CERTIFICATE-----"):
        raise ValueError(f"TLS certificate {cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----): "
                         "give the server's certificate, then its intermediates (tls.cert, "
                         "http.tls.certificate, --tls-cert)")
    if not _has(key, b"PRIVATE KEY-----"):
        raise ValueError(f"TLS key {key} holds no PEM private key (-----BEGIN PRIVATE KEY-----): give "
                         "the certificate's private key (tls.key, http.tls.key, --tls-key)")
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_no_password)
    except ValueError as exc:
        raise ValueError(f"TLS key {key} is encrypted: give it decrypted (openssl pkey -in "
                         f"{key} -out PLAIN.key), readable only by the registry's user") from exc
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ValueError(f"TLS key {key} is not the key of the certificate {cert} (the first "
                             "certificate in the file must be the server's own): give the key it "
                             "was made with, or put the server's certificate first") from exc
        raise ValueError(f"cannot load the TLS certificate {cert} with its key {key}: "
                         f"{exc.reason or exc}") from exc
    for ca in client_cas:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"client CA {ca} (tls.clientcas, http.tls.clientcas): not a readable "
                             f"PEM CA certificate ({getattr(exc, 'strerror', None) or exc})") from exc
    if client_cas:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
