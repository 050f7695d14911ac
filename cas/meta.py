"""The store's metadata: pieces, recipes, blobs, links, open ingests, packs, trash.

:class:`Metadata` is the interface, with a contract per method; its row types
(:class:`Location`, :class:`IngestRow`) and the recipe encoding live here too.
:class:`cas.sqlite_meta.SqliteMetadata` is the embedded default (SQLite in WAL mode in
the store directory); a networked database (PostgreSQL, shared by registry replicas)
implements the same protocol and passes the same suite,
``tests/cas/test_metadata_contract.py``. Every method is one transaction: either all of
it happens or none of it does, which is what makes a ``kill -9`` at any point leave a
consistent store.

Invariants the methods keep:

- A piece's reference count is the number of times committed recipes name it.
- A piece is removed only when its count is 0 and no open ingest holds it; the lookup
  that lets an ingest reuse a piece and the hold are one transaction, so GC (in any
  process) cannot remove a piece between the two.
- Pack bytes are released only after the transaction that stopped referencing them has
  committed (via ``trash``), so a crash can leak space but never lose referenced bytes.

The SQLite schema is drawn in :mod:`cas.sqlite_meta`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CODEC_RAW",
    "CODEC_ZSTD",
    "IngestRow",
    "Location",
    "Metadata",
    "decode_recipe",
    "encode_recipe",
    "iter_recipe",
    "missing_piece",
]

CODEC_RAW = 0
CODEC_ZSTD = 1

_ENTRY = struct.Struct("<32sI")


def encode_recipe(entries: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(_ENTRY.pack(k, n) for k, n in entries)


def decode_recipe(blob: bytes) -> list[tuple[bytes, int]]:
    return list(_ENTRY.iter_unpack(blob))


def missing_piece(digest: str, wanted: Iterable[bytes], present: set[bytes]) -> str:
    """Why a commit of ``digest`` failed: a piece of its recipe (``wanted``) is not among
    the committed ones (``present``)."""
    gone = next((k for k in wanted if k not in present), b"")
    return (f"blob {digest}: its piece {gone.hex()} is no longer in the store (deleted while"
            " the blob was written); nothing was committed: write the blob again")


def iter_recipe(blob: bytes) -> Iterator[tuple[bytes, int]]:
    """The entries of an encoded recipe, decoded one by one as they are asked for."""
    return _ENTRY.iter_unpack(blob)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a piece's stored bytes are: ``stored`` bytes at ``offset`` in ``pack``, or
    inline in ``data`` (pack None); ``codec`` says how they encode its ``length`` raw
    bytes."""

    key: bytes
    length: int  # raw (logical) length
    stored: int  # stored length (compressed or raw)
    codec: int
    pack: str | None
    offset: int
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class IngestRow:
    """An open ingest as of its last checkpoint: bytes received (``offset``), pieces
    recorded (``npieces``), its pack and that pack's size, the length of its tail file,
    and when it began and last checkpointed (seconds since the epoch)."""

    id: str
    algorithm: str
    offset: int
    npieces: int
    pack: str | None
    pack_size: int
    tail_len: int
    created: float
    updated: float


class Metadata(Protocol):
    """What the store needs from its metadata database. Contracts that hold for every
    method (``tests/cas/test_metadata_contract.py`` checks them for every implementation):

    - **Atomic.** Each call is one transaction: all of it happens or none of it does,
      also when the process dies in the middle.
    - **Durable and visible on return.** Once a call that writes has returned, its
      effect survives a crash of the calling process, and every later call — through
      this handle, another handle, or another process sharing the store — sees it.
    - **Shared.** Several processes (registry replicas, a ``pybuild storage gc`` beside
      a running server) may each hold a handle on the same metadata at once; no
      contract relies on state kept in one process. Writers that conflict are
      serialised by the database (they may wait, never interleave).
    - **Thread-safe.** One handle is called from many worker threads at once; methods
      may block and are never called from the event loop.
    - **Errors.** A full or read-only disk under the database raises
      :class:`~cas.errors.StorageFull` / :class:`~cas.errors.StorageNotWritable`;
      any call after :meth:`close` raises :class:`~cas.errors.StoreClosed`.

    Keys are BLAKE3 digests (32 bytes); digests are OCI digest strings; recipes are
    lists of (key, length) in blob order (:func:`encode_recipe` stores them).
    """

    def close(self) -> None:
        """Wait for this handle's calls in flight, then release it; later calls on it
        raise StoreClosed. Closing twice is harmless; other handles are unaffected."""

    # -- ingests -------------------------------------------------------------------------

    def create_ingest(self, ingest_id: str, algorithm: str) -> IngestRow:
        """Record a new open ingest (offset 0, no pieces, no pack; ``created`` and
        ``updated`` now) and return its row. Ids are unique (callers make them random)."""

    def get_ingest(self, ingest_id: str) -> IngestRow | None:
        """The open ingest's row as of its last checkpoint, or None (unknown, committed
        or dropped)."""

    def list_ingests(self) -> list[IngestRow]:
        """Every open ingest, oldest (``created``) first."""

    def set_ingest_pack(self, ingest_id: str, pack: str) -> None:
        """Register ``pack`` (no live bytes yet) and make it the ingest's pack, in one
        transaction. From then on the pack is known (:meth:`is_pack_known`), so GC does
        not take its file for an orphan, and it is not trashed while the ingest is open.
        Called before the pack's file is created."""

    def hold_existing(self, ingest_id: str, entries: list[tuple[int, bytes]], *,
                      expected: bool = False) -> dict[bytes, Location]:
        """For (seq, key) entries: the committed pieces among the keys, with their
        locations, each now *held* by the ingest at that seq. The lookup and the hold
        are one transaction, so :meth:`collect_pieces` (in any process) cannot remove a
        returned piece until the ingest is committed or dropped. Keys not committed are
        left out: the caller stores those pieces itself.

        ``expected``: the caller has just seen these keys committed (a recipe it looked
        up, a plan's bases), so the read-only look beforehand - which spares a write
        transaction when none is known - would only repeat that lookup: skipped."""

    def checkpoint(self, ingest_id: str, rows: list[tuple[int, bytes, int, Location | None]],
                   offset: int, npieces: int, pack_size: int, tail_len: int) -> None:
        """Record the pieces cut since the last checkpoint — (seq, key, length,
        location), location None for a held committed piece — and the ingest's new
        ``offset``, ``npieces``, ``pack_size`` and ``tail_len`` (``updated`` now), in one
        transaction. A crash before it returns leaves the previous checkpoint whole."""

    def ingest_recipe(self, ingest_id: str) -> list[tuple[int, Location]]:
        """The checkpointed pieces (seq < ``npieces``) of an open ingest, in seq order:
        the ones it stored with their location, the held committed ones with
        ``stored == -1`` (look them up with :meth:`locations`)."""

    def rewind_ingest(self, ingest_id: str) -> None:
        """Forget whatever the ingest recorded after its last checkpoint (seq >=
        ``npieces``): what a resume after a crash starts from."""

    def drop_ingest(self, ingest_id: str) -> None:
        """Forget the open ingest, its pieces and its links
        (:func:`~cas.holders.ingest_holder`), in one transaction; its pack, which then
        holds no live bytes, goes to the trash whole. Unknown ids are a no-op."""

    def commit_blob(self, ingest_id: str | None, digest: str, size: int,
                    recipe: list[tuple[bytes, int]], new: dict[bytes, Location],
                    link: str | None) -> bool:
        """Make a blob visible, in one transaction: the ``new`` pieces the ingest stored
        become committed (where another commit got the same key in first, the copy's
        pack range goes to the trash), every piece's reference count grows by the times
        ``recipe`` names it, and the blob row is written (``created`` now). Links
        ``link`` to it if given, and closes the ingest (as :meth:`drop_ingest` would,
        its pack trashed if nothing in it stayed live, its links removed).

        A piece ``recipe`` names that is neither in ``new`` nor committed (deleted while
        the blob was written: :meth:`delete_blob` of a blob the ingest held by a link)
        fails the commit with :class:`~cas.errors.StoreCorrupt`, nothing recorded.

        Returns False when the blob already existed: then none of the ingest's pieces is
        kept, the link is still made. Of concurrent commits of one digest (any
        processes) exactly one returns True."""

    # -- reads ---------------------------------------------------------------------------

    def blob(self, digest: str) -> tuple[int, bytes] | None:
        """(size, encoded recipe) of a committed blob, or None. Never waits for a writer:
        it may read a snapshot, but one that includes every commit returned before the
        call began."""

    def blob_head(self, digest: str) -> tuple[int, float] | None:
        """(size, commit time) of a committed blob, or None, without its recipe; reads as
        :meth:`blob`. The commit time is that of the blob's row: a blob deleted and
        committed again has a new one."""

    def locations(self, keys: Iterable[bytes]) -> dict[bytes, Location]:
        """The committed pieces among ``keys`` with their locations (duplicates are
        fine; unknown keys are left out). Never waits for a writer, as :meth:`blob`."""

    def holds_pieces(self) -> bool:
        """Whether any piece is stored at all (False: :meth:`locations` of any keys is
        empty). One indexed probe, whatever the store's size; never waits for a writer."""

    def known_pieces(self, keys: Iterable[bytes]) -> set[bytes]:
        """The committed pieces among ``keys``, as :meth:`locations` finds them, without
        their locations (what a pull plans with: cheaper per key)."""

    # -- links ---------------------------------------------------------------------------

    def link(self, holder: str, digest: str) -> bool:
        """Record that ``holder`` (a repository, an image, a build-cache entry) keeps
        the blob, as of now (linking again moves the link's time, as does
        :meth:`commit_blob`'s ``link``); False (nothing recorded) when the blob does not
        exist. Atomic with :meth:`collect_blobs`: a link never points at a removed blob."""

    def link_all(self, holder: str, digests: list[str]) -> list[str] | None:
        """Link every one of ``digests`` in one transaction, as of now (as :meth:`link`),
        and return those not linked before (in order, each once); or None, with nothing
        linked, when any of the blobs does not exist."""

    def unlink(self, holder: str, digest: str) -> bool:
        """Remove the link; True when there was one. The blob stays (GC may take it)."""

    def unlink_stale(self, holder: str, digests: list[str], before: float) -> list[str]:
        """Remove the links of ``holder`` among ``digests`` that were last made before
        ``before`` (``time.time()``), in one transaction, and return the digests
        unlinked. A link made (again) after ``before`` stays, whichever call makes it and
        however close to this one: the registry's retention relies on it to never take a
        blob that a push is linking."""

    def is_linked(self, holder: str, digest: str) -> bool:
        """Whether ``holder`` links the blob."""

    def holders(self, digest: str) -> list[str]:
        """Every holder linking the blob, sorted."""

    def linked(self, holder: str) -> list[str]:
        """Every digest ``holder`` links, sorted."""

    def delete_blob(self, digest: str) -> bool:
        """Remove the blob and every link to it, and take its recipe's references off
        its pieces, in one transaction; the pieces go at the next
        :meth:`collect_pieces`. False when there was no such blob."""

    # -- maintenance ---------------------------------------------------------------------

    def collect_blobs(self, older_than: float, batch: int = 500) -> int:
        """Delete (as :meth:`delete_blob`) up to ``batch`` blobs that no holder links
        and that were committed before ``older_than`` (seconds since the epoch), in one
        transaction; return how many. Call until it returns 0."""

    def unlinked_since(self, since: float) -> tuple[int, int]:
        """The blobs no holder links that were committed at or after ``since`` (what
        :meth:`collect_blobs` with that cutoff keeps only for their age): how many, and
        the sum of their sizes."""

    def collect_pieces(self, batch: int = 5000) -> tuple[int, int]:
        """Delete up to ``batch`` pieces that no recipe names (reference count 0) and no
        open ingest holds, in one transaction; their pack ranges go to the trash, and a
        pack left with no live bytes and no open ingest writing it goes whole. Returns
        (pieces, their stored bytes). Call until it returns (0, 0)."""

    def trash(self, limit: int = 1000) -> list[tuple[int, str, int | None, int | None]]:
        """Up to ``limit`` entries of pack space to release, oldest first: (id, pack,
        offset, length) for a range, (id, pack, None, None) for a whole pack. An entry
        is added only by the transaction that stopped referencing its bytes, and stays
        until :meth:`forget_trash`: a crash in between releases it again (releasing is
        idempotent). The transactions that added the entries returned are durable (a
        backend that commits lazily syncs first): a power loss must not take back a
        decision whose bytes the caller is about to release."""

    def forget_trash(self, ids: list[int]) -> None:
        """Remove trash entries (released by the caller). Unknown ids are a no-op."""

    def is_pack_known(self, pack: str) -> bool:
        """Whether the pack is registered (:meth:`set_ingest_pack`) and not trashed."""

    def pack_names(self) -> set[str]:
        """Every registered pack."""

    def pack_live(self) -> dict[str, int]:
        """Every registered pack with its live bytes (stored bytes of committed pieces)."""

    def stats(self) -> dict[str, int]:
        """Counts as of one moment: ``blobs``, ``logical_bytes`` (sum of blob sizes),
        ``pieces``, ``physical_bytes`` (their stored bytes), ``unique_bytes`` (their raw
        bytes), ``open_ingests``, ``links``, ``packs``."""

    def disk_bytes(self) -> int:
        """Bytes the metadata occupies on the store's own disk (0 when it lives
        elsewhere, as in a networked database)."""

    def snapshot(self) -> AbstractContextManager[Metadata]:
        """A read-only view of one consistent moment, for long readers (fsck) while
        writers in any process go on: the view sees none of their later commits.
        Only reads may be called on it; it ends with the ``with`` block."""

    def iter_blobs(self) -> Iterator[tuple[str, int, bytes]]:
        """Every blob as (digest, size, encoded recipe), by digest, in batches."""

    def iter_pieces(self) -> Iterator[tuple[Location, int]]:
        """Every committed piece with its reference count, by key, in batches."""

    def dangling_links(self) -> list[tuple[str, str]]:
        """(holder, digest) of every link whose blob does not exist (fsck: none should)."""
