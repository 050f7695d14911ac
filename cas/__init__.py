"""pybuild's content-addressed store: digests, chunking, the piece store, GC and fsck.

Layering of the store's modules (an arrow is "imports"; nothing imports back up)::

    cas.cli ──> cas.open ──> cas.store ──┬──> cas.ingest ───────┐
                open_store   Store       ├──> cas.maintenance ──┤  gc, fsck, stats
                                         └──────────────────────┤
                                                                v
                                   cas.core  StoreCore: metadata, packs, chunk params,
                                      │      worker pools, the operations they share
         ┌──────────────┬─────────────┼───────────────┬──────────────┐
         v              v             v               v              v
    cas.location    cas.meta     cas.sqlite_meta   cas.packs     cas.chunker
    StoreConfig     Metadata     SqliteMetadata    PackBackend
                    (protocol)   -> cas.sqlite_db  (protocol)
                                                   -> cas.pack_files, cas.pack_memory

    cas.core opens the packs through cas.pack_select (disk, or S3: cas.pack_s3, with
    cas.s3_location); GC (cas.maintenance) compacts S3 packs through cas.compaction.

    cas.ingest (Ingest's calls) builds on cas.ingest_assembly (a blob assembled from
    whole pieces), on cas.ingest_checkpoints (checkpoint, park, resume), on
    cas.ingest_pieces (storing the pieces); cas.assemble (PieceIngest: whole pieces and a
    known recipe, for piece-level pushes) builds on cas.ingest_pieces too, and on
    cas.prehash (its background hash, started from a base's kept SHA-256 state).

    leaves: cas.blobs (BlobInfo, Piece, Recipe, Segment, IngestInfo), cas.digest,
            cas.digest_states (kept SHA-256 states), cas.errors, cas.units, cas.holders,
            cas.reserve (room kept back, so that a full disk can be emptied),
            cas.read_only (a store on a read-only file system, opened to be read)

Open a store with ``await open_store(StoreConfig.at(storage))``. ``Store``, ``Ingest`` and
maintenance share one ``StoreCore``; none of them reaches into another. The metadata
and the packs are protocols with a contract per method (``cas.meta.Metadata``,
``cas.packs.PackBackend``), each checked by one suite every implementation passes.
"""

# Names are imported from their modules on first use (PEP 562), so a program that
# needs only digests or the store does not load GC, fsck and the chunker with them.

import typing as _typing

from .lazy import lazy_attributes as _lazy_attributes

if _typing.TYPE_CHECKING:
    from .assemble import PieceIngest, PieceMismatch, PiecesMissing, RecipeInvalid
    from .blobs import BlobInfo, IngestInfo, Piece, Recipe, Segment
    from .chunker import ChunkParams
    from .core import StoreCore
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
        StorageError,
        StorageFull,
        StorageNotOwned,
        StorageNotWritable,
        StoreClosed,
        StoreCorrupt,
        UnsupportedDigestAlgorithm,
        storage_error,
    )
    from .ingest import Ingest, PieceMissing, SourceFailed
    from .location import StoreConfig, check_owner
    from .maintenance import FsckReport, GcReport, Stats
    from .open import open_store
    from .store import Store

_WHERE = {
    "ChunkParams": "chunker",
    "ALGORITHMS": "digest",
    "DEFAULT_ALGORITHM": "digest",
    "Digest": "digest",
    "new_hasher": "digest",
    "BlobUnknown": "errors",
    "CasError": "errors",
    "DigestMismatch": "errors",
    "IngestOffsetMismatch": "errors",
    "IngestUnknown": "errors",
    "InvalidDigest": "errors",
    "InvalidRange": "errors",
    "SizeMismatch": "errors",
    "StorageError": "errors",
    "StorageFull": "errors",
    "StorageNotOwned": "errors",
    "StorageNotWritable": "errors",
    "StoreClosed": "errors",
    "storage_error": "errors",
    "StoreCorrupt": "errors",
    "UnsupportedDigestAlgorithm": "errors",
    "Ingest": "ingest",
    "PieceIngest": "assemble",
    "PieceMismatch": "assemble",
    "PiecesMissing": "assemble",
    "RecipeInvalid": "assemble",
    "IngestInfo": "blobs",
    "SourceFailed": "ingest",
    "PieceMissing": "ingest",
    "FsckReport": "maintenance",
    "GcReport": "maintenance",
    "Stats": "maintenance",
    "BlobInfo": "blobs",
    "Piece": "blobs",
    "Recipe": "blobs",
    "Segment": "blobs",
    "Store": "store",
    "StoreConfig": "location",
    "check_owner": "location",
    "StoreCore": "core",
    "open_store": "open",
}

__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "BlobInfo",
    "BlobUnknown",
    "CasError",
    "ChunkParams",
    "Digest",
    "DigestMismatch",
    "FsckReport",
    "GcReport",
    "Ingest",
    "IngestInfo",
    "IngestOffsetMismatch",
    "IngestUnknown",
    "InvalidDigest",
    "InvalidRange",
    "Piece",
    "PieceIngest",
    "PieceMismatch",
    "PieceMissing",
    "PiecesMissing",
    "Recipe",
    "RecipeInvalid",
    "Segment",
    "SizeMismatch",
    "SourceFailed",
    "Stats",
    "StorageError",
    "StorageFull",
    "StorageNotOwned",
    "StorageNotWritable",
    "Store",
    "StoreClosed",
    "StoreConfig",
    "StoreCore",
    "StoreCorrupt",
    "UnsupportedDigestAlgorithm",
    "check_owner",
    "new_hasher",
    "open_store",
    "storage_error",
]


__getattr__ = _lazy_attributes(__name__, _WHERE)
