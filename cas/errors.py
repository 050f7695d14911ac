"""Errors raised by the content-addressed store.

::

    CasError
    ├── InvalidDigest                 text that is not ``algorithm:encoded``
    ├── UnsupportedDigestAlgorithm    a well-formed digest of an algorithm we cannot verify
    ├── DigestMismatch                content does not hash to the digest it claimed
    ├── SizeMismatch                  content is not as long as it claimed
    ├── BlobUnknown                   no committed blob with that digest
    ├── IngestUnknown                 no open ingest with that id (expired, committed or aborted)
    ├── IngestOffsetMismatch          a resumed write does not start where the ingest stands
    ├── InvalidRange                  a byte range outside the blob
    ├── StorageFull                   the backend ran out of space (ENOSPC, quota)
    └── StoreCorrupt                  bytes on disk do not match their recorded key

Every message names the problem and, where there is one, the fix. Errors from lower
layers (``OSError``, ``sqlite3.Error``) are mapped here and re-raised ``from`` the cause.
"""

from __future__ import annotations

__all__ = [
    "BlobUnknown",
    "CasError",
    "DigestMismatch",
    "IngestOffsetMismatch",
    "IngestUnknown",
    "InvalidDigest",
    "InvalidRange",
    "SizeMismatch",
    "StorageFull",
    "StoreCorrupt",
    "UnsupportedDigestAlgorithm",
]


class CasError(Exception):
    """Base of every error the store raises."""


class InvalidDigest(CasError, ValueError):
    def __init__(self, text: object, why: str) -> None:
        super().__init__(f"invalid digest {text!r}: {why}")
        self.text = text


class UnsupportedDigestAlgorithm(CasError, ValueError):
    def __init__(self, algorithm: str) -> None:
        super().__init__(
            f"unsupported digest algorithm {algorithm!r}: use sha256, sha512 or blake3"
        )
        self.algorithm = algorithm


class DigestMismatch(CasError):
    def __init__(self, expected: object, actual: object) -> None:
        super().__init__(
            f"digest mismatch: expected {expected}, content hashes to {actual}; "
            "nothing was stored — resend the content or correct the digest"
        )
        self.expected = expected
        self.actual = actual


class SizeMismatch(CasError):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(
            f"size mismatch: expected {expected} bytes, received {actual}; "
            "the stream was truncated or the size is wrong — nothing was stored"
        )
        self.expected = expected
        self.actual = actual


class BlobUnknown(CasError, KeyError):
    def __init__(self, digest: object) -> None:
        super().__init__(f"blob unknown: {digest} is not in the store")
        self.digest = digest

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class IngestUnknown(CasError, KeyError):
    def __init__(self, ingest_id: str) -> None:
        super().__init__(
            f"ingest unknown: {ingest_id!r} is not open (committed, aborted or expired); "
            "start a new one"
        )
        self.ingest_id = ingest_id

    def __str__(self) -> str:
        return str(self.args[0])


class IngestOffsetMismatch(CasError):
    def __init__(self, ingest_id: str, expected: int, got: int) -> None:
        super().__init__(
            f"ingest {ingest_id} stands at byte {expected}, but the write starts at {got}; "
            f"resume from byte {expected}"
        )
        self.ingest_id = ingest_id
        self.expected = expected
        self.got = got


class InvalidRange(CasError, ValueError):
    def __init__(self, offset: int, length: int | None, size: int) -> None:
        super().__init__(
            f"invalid range: offset {offset}, length {length} outside a blob of {size} bytes"
        )
        self.offset = offset
        self.length = length
        self.size = size


class StorageFull(CasError, OSError):
    def __init__(self, where: str) -> None:
        super().__init__(
            f"storage full while writing {where}: free space or move the store "
            "(--storage / PYBUILD_STORAGE); nothing partial was committed"
        )


class StoreCorrupt(CasError):
    def __init__(self, what: str) -> None:
        super().__init__(f"store corrupt: {what}; run 'pybuild storage fsck' for a full report")
