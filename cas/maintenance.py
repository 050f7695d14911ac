"""Garbage collection, consistency checks and statistics (run in a worker thread).

Each takes the store's :class:`~cas.core.StoreCore` and uses only its public operations
and its metadata's :class:`~cas.meta.Metadata` contract; ``Store.gc/fsck/stats`` run them.

GC is online: it runs in short transactions while ingests continue. It removes blobs no
holder links (older than a grace period, so a blob just committed without a link is not
taken from under its writer), then pieces no recipe and no open ingest needs, then frees
their bytes — always *after* the transaction that stopped referencing them, so a crash can
leak space (a later GC reclaims it) but never lose a referenced byte.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import blake3

from .compaction import compact_packs
from .digest import Digest, new_hasher
from .digest_states import sweep_states
from .errors import CasError
from .meta import Metadata, decode_recipe
from .pack_select import check_packs_here

if TYPE_CHECKING:
    from .core import StoreCore

__all__ = ["FsckReport", "GcReport", "Stats", "check", "collect_garbage", "statistics"]


@dataclass(frozen=True, slots=True)
class GcReport:
    blobs_removed: int
    pieces_removed: int
    bytes_freed: int
    orphan_packs_removed: int
    bytes_compacted: int = 0  # given back by rewriting packs that cannot free in place (S3)
    ingests_expired: int = 0  # open ingests idle past ingest_ttl, aborted (their bytes in bytes_freed)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Stats:
    blobs: int
    pieces: int
    logical_bytes: int  # sum of blob sizes
    physical_bytes: int  # stored bytes of live pieces (after dedup and compression)
    disk_bytes: int  # what the store occupies on disk (packs + metadata)
    open_ingests: int
    links: int
    packs: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.physical_bytes if self.physical_bytes else 1.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "dedup_ratio": round(self.dedup_ratio, 4)}


@dataclass(slots=True)
class FsckReport:
    blobs_checked: int = 0
    pieces_checked: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "blobs_checked": self.blobs_checked,
            "pieces_checked": self.pieces_checked,
            "problems": self.problems,
            "notes": self.notes,
        }


def collect_garbage(core: StoreCore, grace: float, compact_all: bool = False,
                    ingest_ttl: float | None = None) -> GcReport:
    meta = core.meta
    check_packs_here(meta, core.packs)  # another directory's packs: change nothing
    expired = expired_bytes = 0
    if ingest_ttl is not None:
        # Interrupted uploads and pulls nobody resumed (a pull killed before its first
        # checkpoint is named nowhere else): their packs, which hold nothing committed,
        # go with them (as large as they grew, not as their last checkpoint says).
        cutoff = time.time() - ingest_ttl
        for row in meta.list_ingests():
            if row.updated < cutoff:
                expired_bytes += (core.packs.size(row.pack) or 0) if row.pack else 0
                core.drop_ingest(row.id)
                expired += 1
    blobs = 0
    while n := meta.collect_blobs(time.time() - grace):
        blobs += n
    # The SHA-256 states kept for blobs that are gone (cas.digest_states).
    sweep_states(core.root, lambda encoded: meta.blob(f"sha256:{encoded}") is not None)
    pieces = freed = 0
    while True:
        n, b = meta.collect_pieces()
        if not n:
            break
        pieces += n
        freed += b
    core.empty_trash()
    compacted = compact_packs(core, full=compact_all)
    # A pack file with no row is left over from a crash; rows are written first.
    known = meta.pack_names()
    orphans = 0
    for name in core.packs.names():
        if name not in known and not meta.is_pack_known(name):
            core.packs.delete(name)
            orphans += 1
    return GcReport(blobs, pieces, freed + expired_bytes, orphans, compacted, expired)


def statistics(core: StoreCore) -> Stats:
    s = core.meta.stats()
    disk = core.packs.allocated() + core.meta.disk_bytes()
    return Stats(
        blobs=s["blobs"],
        pieces=s["pieces"],
        logical_bytes=s["logical_bytes"],
        physical_bytes=s["physical_bytes"],
        disk_bytes=disk,
        open_ingests=s["open_ingests"],
        links=s["links"],
        packs=s["packs"],
    )


def check(core: StoreCore, progress: Callable[[str], None] | None = None) -> FsckReport:
    """Verify every blob's digest and every piece's BLAKE3, and the bookkeeping, as of one
    consistent moment: uploads and commits may go on meanwhile."""
    check_packs_here(core.meta, core.packs)  # not "every piece damaged" for a wrong directory
    with core.meta.snapshot() as meta:
        return _check(core, meta, progress)


def _check(core: StoreCore, meta: Metadata, progress: Callable[[str], None] | None) -> FsckReport:
    report = FsckReport()
    say = progress or (lambda _msg: None)
    refs: Counter[bytes] = Counter()
    verified: dict[bytes, bool] = {}
    pieces = {loc.key: (loc, r) for loc, r in meta.iter_pieces()}

    def piece_bytes(key: bytes) -> bytes | None:
        entry = pieces.get(key)
        if entry is None:
            return None
        loc = entry[0]
        try:
            data = core.load(loc)
        except (CasError, OSError) as exc:
            if verified.get(key, True):
                report.problems.append(f"piece {key.hex()}: unreadable: {exc}")
            verified[key] = False
            return None
        if key not in verified:
            ok = len(data) == loc.length and blake3.blake3(data).digest() == key
            verified[key] = ok
            if not ok:
                report.problems.append(
                    f"piece {key.hex()}: its bytes do not match its BLAKE3 key (damaged on disk)"
                )
        return data if verified[key] else None

    for digest_text, size, packed in meta.iter_blobs():
        report.blobs_checked += 1
        entries = decode_recipe(packed)
        refs.update(k for k, _ in entries)
        if sum(n for _, n in entries) != size:
            report.problems.append(f"blob {digest_text}: recipe length differs from its size {size}")
            continue
        digest = Digest.parse(digest_text)
        h = new_hasher(digest.algorithm)
        damaged = False
        for key, _ in entries:
            if key not in pieces:
                report.problems.append(f"blob {digest_text}: piece {key.hex()} is missing")
                damaged = True
                break
            data = piece_bytes(key)
            if data is None:
                report.problems.append(f"blob {digest_text}: piece {key.hex()} is damaged")
                damaged = True
                break
            h.update(data)
        if not damaged and h.hexdigest() != digest.encoded:
            report.problems.append(f"blob {digest_text}: content does not match its digest")
        if report.blobs_checked % 100 == 0:
            say(f"checked {report.blobs_checked} blobs")
    for key, (loc, r) in pieces.items():
        report.pieces_checked += 1
        if key not in verified:
            piece_bytes(key)
        if r != refs.get(key, 0):
            # Too high only leaks space; too low could let GC remove a needed piece.
            report.problems.append(
                f"piece {key.hex()}: reference count {r}, but {refs.get(key, 0)} recipes use it"
            )
        if loc.pack is not None and not meta.is_pack_known(loc.pack):
            report.problems.append(f"piece {key.hex()}: its pack {loc.pack} is not registered")
    for holder, digest_text in meta.dangling_links():
        report.problems.append(f"link {holder} -> {digest_text}: the blob does not exist")
    on_disk = set(core.packs.names())
    for name, live in meta.pack_live().items():
        if name not in on_disk and live > 0:
            report.problems.append(f"pack {name}: missing, but {live} bytes of pieces live in it")
    orphans = on_disk - meta.pack_names()
    if orphans:
        report.notes.append(
            f"{len(orphans)} pack file(s) left by an interrupted write; 'pybuild storage gc' removes them"
        )
    pending = meta.trash(limit=1)
    if pending:
        report.notes.append("space of removed pieces is waiting to be freed; 'pybuild storage gc' frees it")
    ingests = meta.list_ingests()
    if ingests:
        report.notes.append(f"{len(ingests)} open ingest(s) (resumable uploads)")
    return report
