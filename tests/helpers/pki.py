"""A private PKI for TLS tests: a root CA, an intermediate, and certificates it issues
(servers for 127.0.0.1 and localhost, expired ones, ones for another name, clients)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Issued:
    cert: Path  # PEM: the certificate, then its issuers up to (not including) the root
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, certs: list[x509.Certificate], key: ec.EllipticCurvePrivateKey) -> Issued:
    cert = path.with_suffix(".crt")
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    key_file = path.with_suffix(".key")
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(cert, key_file)


class Authority:
    """A CA (``parent``: an intermediate of that CA) that issues certificates in ``directory``."""

    def __init__(self, directory: Path, name: str = "Test Root CA", parent: Authority | None = None) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.parent = parent
        self.subject = _name(name)
        builder = self._builder(self.subject, self.key, _NOW - datetime.timedelta(days=1),
                                _NOW + datetime.timedelta(days=30))
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        if parent is None:
            self.cert = builder.issuer_name(self.subject).sign(self.key, hashes.SHA256())
        else:
            self.cert = builder.issuer_name(parent.subject).sign(parent.key, hashes.SHA256())
        self.chain: list[x509.Certificate] = [self.cert, *(parent.chain[:-1] if parent else [])]
        stem = name.lower().replace(" ", "-")
        self.file = _write(directory / stem, [self.cert], self.key).cert

    @staticmethod
    def _builder(subject: x509.Name, key: ec.EllipticCurvePrivateKey, start: datetime.datetime,
                 end: datetime.datetime) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end))

    def intermediate(self, name: str = "Test Intermediate CA") -> Authority:
        return Authority(self.directory, name, parent=self)

    def issue(self, stem: str, names: tuple[str, ...] = ("127.0.0.1", "localhost"), *,
              client: bool = False, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        start, end = _NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=30)
        if expired:
            start, end = _NOW - datetime.timedelta(days=60), _NOW - datetime.timedelta(days=30)
        builder = self._builder(_name(names[0]), key, start, end).issuer_name(self.subject)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = [cert, *(self.chain if self.parent is not None else [])]
        return _write(self.directory / stem, chain, key)
