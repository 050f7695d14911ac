"""pybuild's content-addressed store: digests, chunking, the piece store, GC and fsck."""

from .chunker import ChunkParams
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
from .ingest import Ingest, IngestInfo
from .maintenance import FsckReport, GcReport, Stats
from .store import BlobInfo, Piece, Recipe, Segment, Store

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "BlobInfo",
    "BlobUnknown",
    "ChunkParams",
    "FsckReport",
    "GcReport",
    "Ingest",
    "IngestInfo",
    "Piece",
    "Recipe",
    "Segment",
    "Stats",
    "Store",
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
