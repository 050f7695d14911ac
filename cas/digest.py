"""OCI content digests: ``algorithm:encoded``.

Grammar and registered algorithms follow the OCI image spec, ``descriptor.md``
("Digests"): ``sha256`` (64 lowercase hex), ``sha512`` (128 lowercase hex) and
``blake3`` (64 lowercase hex). Any other algorithm that matches the grammar is
*syntactically* valid but cannot be verified here, so :meth:`Digest.parse` refuses it
with :class:`UnsupportedDigestAlgorithm`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

import blake3 as _blake3

from .errors import InvalidDigest, UnsupportedDigestAlgorithm

__all__ = ["ALGORITHMS", "DEFAULT_ALGORITHM", "Digest", "Hasher", "new_hasher"]

DEFAULT_ALGORITHM = "sha256"

# algorithm -> length of the hex encoding
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128, "blake3": 64}

_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX = re.compile(r"^[0-9a-f]+$")


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


class _Blake3Hasher:
    """BLAKE3 with multithreading for large updates (the GIL is released)."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = _blake3.blake3(max_threads=_blake3.blake3.AUTO)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> Hasher:
    """A streaming hasher for ``algorithm``; raises UnsupportedDigestAlgorithm."""
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "sha512":
        return hashlib.sha512()
    if algorithm == "blake3":
        return _Blake3Hasher()
    raise UnsupportedDigestAlgorithm(algorithm)


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A verified-shape OCI digest. ``str(d)`` is the canonical ``algorithm:encoded``."""

    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:encoded``; raise InvalidDigest or UnsupportedDigestAlgorithm."""
        if not isinstance(text, str) or not _GRAMMAR.match(text):
            raise InvalidDigest(text, "expected 'algorithm:hex', e.g. 'sha256:' + 64 hex digits")
        algorithm, encoded = text.split(":", 1)
        expected_len = ALGORITHMS.get(algorithm)
        if expected_len is None:
            raise UnsupportedDigestAlgorithm(algorithm)
        if len(encoded) != expected_len or not _HEX.match(encoded):
            raise InvalidDigest(
                text, f"{algorithm} digests have {expected_len} lowercase hex digits"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
        """The digest of ``data`` (small inputs; stream large ones through new_hasher)."""
        h = new_hasher(algorithm)
        h.update(data)
        return cls(algorithm, h.hexdigest())

    def hasher(self) -> Hasher:
        return new_hasher(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"

    @property
    def short(self) -> str:
        """``sha256:0123456789ab``: for progress lines and logs."""
        return f"{self.algorithm}:{self.encoded[:12]}"
