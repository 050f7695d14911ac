"""pybuild's content-addressed store: digests, chunking, the piece store, GC and fsck."""

from .digest import ALGORITHMS, DEFAULT_ALGORITHM, Digest, new_hasher
from .errors import (
    BlobUnknown,
    CasError,
    DigestMismatch,
    IngestOffsetMismatch,
    IngestUnknown,
    InvalidDigest,
    InvalidRange,
    SizeMismatch,
    StorageFull,
    StoreCorrupt,
    UnsupportedDigestAlgorithm,
)

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "BlobUnknown",
    "CasError",
    "Digest",
    "DigestMismatch",
    "IngestOffsetMismatch",
    "IngestUnknown",
    "InvalidDigest",
    "InvalidRange",
    "SizeMismatch",
    "StorageFull",
    "StoreCorrupt",
    "UnsupportedDigestAlgorithm",
    "new_hasher",
]
