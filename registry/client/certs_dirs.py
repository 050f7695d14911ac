"""Per-registry certificate directories, as Docker and containers/image (podman, skopeo,
buildah) read them, and the TLS context a registry's requests go with.

A directory named as the registry's ``host[:port]`` holds:

- ``*.crt``: CA certificates (PEM) trusted for that registry, besides the system's
  (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` move those);
- ``*.cert`` with ``*.key`` of the same name: a client certificate (PEM, intermediates
  after it) and its key, presented when the registry asks for one.

It is looked for under each of :func:`default_roots`, in containers/image's order
(``~/.config/containers/certs.d``, ``/etc/containers/certs.d``, ``/etc/docker/certs.d``):
the first root that has a directory for the host wins; the others are not read. A
``cert_dir`` (``--cert-dir DIR``, as podman's and skopeo's) is used for every registry
instead. Client certificates are presented to insecure registries too (as
containers/image does): only the server's certificate goes unchecked there.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import ClientError

__all__ = ["CertsDirError", "TlsSettings", "closed_after_handshake", "default_roots", "host_certs_dir",
           "tls_context", "tls_refusal"]

# OpenSSL's X509_V_ERR_* codes that say something else than "an unknown authority".
_NOT_YET_VALID, _EXPIRED, _NAME_MISMATCH, _IP_MISMATCH = 9, 10, 62, 64
# What a server that wants a client certificate alerts with when none came, or one it does
# not accept (Go's Distribution: "bad certificate" for both).
_CLIENT_CERT_REFUSED = frozenset({
    "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE", "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "TLSV1_ALERT_ACCESS_DENIED"})
# What those alerts say of the client's certificate (OpenSSL's servers tell "none" from
# "refused"; Go's says "bad certificate" for both).
_NONE_OR_REFUSED = "wants a TLS client certificate that it accepts, and got none or refused the one it got"
_CLIENT_CERT_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "wants a TLS client certificate that it accepts, and got none",
    "TLSV1_ALERT_UNKNOWN_CA": "refused the TLS client certificate it was given: no CA it trusts signed it",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "refused the TLS client certificate it was given: it has expired",
}


class CertsDirError(ClientError):
    """A certificate directory (or ``--ca-cert``) holds something unusable."""


def default_roots() -> tuple[Path, ...]:
    """Where per-registry directories are looked for, first match wins."""
    return (Path.home() / ".config/containers/certs.d", Path("/etc/containers/certs.d"),
            Path("/etc/docker/certs.d"))


def host_certs_dir(host: str, roots: tuple[Path, ...]) -> Path | None:
    """The certificate directory of ``host`` (``host[:port]``) under the first of ``roots``
    that has one, or None."""
    for root in roots:
        candidate = root / host
        try:
            if candidate.is_dir():
                return candidate
        except PermissionError:  # as containers/image: an unreadable root is skipped
            continue
    return None


def tls_context(directory: Path | None, ca_cert: Path | None, verify: bool) -> ssl.SSLContext | bool | None:
    """The TLS settings for one registry: None (verify with the system's CAs) or False
    (verify nothing) when ``directory`` and ``ca_cert`` add nothing; else a context that
    trusts ``ca_cert`` and the directory's ``*.crt`` besides the system's CAs (when
    ``verify``) and presents the directory's client certificate."""
    files = sorted(directory.iterdir()) if directory is not None else []
    cas = [f for f in files if f.suffix == ".crt"] if verify else []
    if ca_cert is not None and verify:
        cas.insert(0, ca_cert)
    pairs = []
    for f in files:
        if f.suffix == ".cert" and not f.with_suffix(".key").exists():
            raise CertsDirError(f"{f}: client certificate without its key {f.with_suffix('.key').name} "
                                "beside it: put the key there (a CA certificate ends in .crt, not .cert)")
        if f.suffix == ".key" and not f.with_suffix(".cert").exists():
            raise CertsDirError(f"{f}: key without its client certificate {f.with_suffix('.cert').name} "
                                "beside it: put the certificate there, or remove the key")
        if f.suffix == ".cert":
            pairs.append((f, f.with_suffix(".key")))
    if not cas and not pairs:
        return None if verify else False
    if verify:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for ca in cas:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError) as exc:
            raise CertsDirError(f"{ca}: not a readable CA certificate in PEM ({exc}); give the "
                                "registry's CA certificate (-----BEGIN CERTIFICATE-----)") from exc
    for cert, key in pairs:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            raise CertsDirError(f"{cert} with {key.name}: not a usable client certificate and key "
                                f"({exc}): both must be PEM, and the key the certificate's own") from exc
    return ctx


def tls_refusal(exc: ssl.SSLError, netloc: str) -> str | None:
    """What is wrong, and what to do, when the TLS handshake with ``netloc`` failed
    because of a certificate (the server's, or the one it wants from the client); None
    for another failure."""
    name = netloc.rpartition(":")[0] if netloc.count(":") == 1 else netloc
    dirs = _dirs(netloc)
    said = getattr(exc, "verify_message", None) or exc.reason or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        if code == _EXPIRED:
            return (f"the TLS certificate of {netloc} has expired ({said}): renew the registry's "
                    "certificate (or set this machine's clock right, if it is wrong)")
        if code == _NOT_YET_VALID:
            return (f"the TLS certificate of {netloc} is not valid yet ({said}): set this "
                    "machine's clock right, or the certificate's start date")
        if code in (_NAME_MISMATCH, _IP_MISMATCH):
            return (f"the TLS certificate of {netloc} is not valid for {name} ({said}): reissue "
                    f"it with {name} in its subjectAltName, or reach the registry by a name "
                    "the certificate lists")
        return (f"the TLS certificate of {netloc} is signed by an unknown authority ({said}): "
                f"trust the registry's CA: put its certificate as ca.crt in {dirs}, or give "
                "--ca-cert FILE (or, unverified, --tls-verify=false)")
    if exc.reason in _CLIENT_CERT_REFUSED:
        return (f"{netloc} {_CLIENT_CERT_ALERTS.get(exc.reason, _NONE_OR_REFUSED)} ({said}): "
                "put a client certificate signed by a CA the registry trusts (http.tls.clientcas), "
                f"and its key, as client.cert and client.key in {dirs}")
    return None


def closed_after_handshake(netloc: str) -> str:
    """What to say of a new TLS connection that ``netloc`` closed without an answer."""
    return (f"{netloc} closed the TLS connection without an answer: a registry that wants a TLS "
            "client certificate (http.tls.clientcas) does that when none it accepts came: put one "
            f"it accepts, and its key, as client.cert and client.key in {_dirs(netloc)}; "
            "otherwise see the registry's log")


def _dirs(netloc: str) -> str:
    return (f"/etc/docker/certs.d/{netloc}/ (or /etc/containers/certs.d/{netloc}/, "
            f"~/.config/containers/certs.d/{netloc}/, or --cert-dir DIR)")


class TlsSettings:
    """The TLS settings of each registry a session reaches, made once per host: ``ca_cert``
    (``--ca-cert``) trusted for every registry, then ``cert_dir`` or the host's directory
    under the first of ``roots`` that has one."""

    def __init__(self, ca_cert: Path | None, cert_dir: Path | None, roots: tuple[Path, ...]) -> None:
        self._ca_cert = ca_cert
        self._cert_dir = cert_dir
        self._roots = roots
        self._made: dict[tuple[str, bool], ssl.SSLContext | bool | None] = {}

    def for_host(self, host: str, verify: bool) -> ssl.SSLContext | bool | None:
        """What ``Wire.request`` takes as ``tls`` for ``host`` (``host[:port]``)."""
        if (host, verify) not in self._made:
            directory = self._cert_dir or host_certs_dir(host, self._roots)
            self._made[host, verify] = tls_context(directory, self._ca_cert, verify)
        return self._made[host, verify]
