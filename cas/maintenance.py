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

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import blake3

from .compaction import compact_packs
from .digest import Digest, new_hasher
from .digest_states import sweep_states
from .errors import CasError, StoreCorrupt
from .meta import Location, Metadata, decode_recipe
from .pack_select import check_packs_here

if TYPE_CHECKING:
    from .core import StoreCore

__all__ = ["FsckProgress", "FsckReport", "GcProgress", "GcReport", "Stats", "check", "collect_garbage",
           "statistics"]

# Threads that verify blobs at once (each reads its pieces, hashes them with SHA-256 and
# BLAKE3, which release the GIL); at most the machine's CPUs.
_FSCK_THREADS = 4
# Pieces fsck remembers having verified, so that one many blobs share is hashed once.
_VERIFIED_KEPT = 100_000


@dataclass(frozen=True, slots=True)
class GcReport:
    blobs_removed: int
    pieces_removed: int
    bytes_freed: int
    orphan_packs_removed: int
    bytes_compacted: int = 0  # given back by rewriting packs that cannot free in place (S3)
    ingests_expired: int = 0  # open ingests idle past ingest_ttl, aborted (their bytes in bytes_freed)
    # Blobs no holder links, kept only because they are younger than the grace, and their
    # bytes: a later GC frees them (unless something links them meanwhile).
    blobs_kept_by_grace: int = 0
    bytes_kept_by_grace: int = 0

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


@dataclass(frozen=True, slots=True)
class GcProgress:
    """Where a GC is: its ``phase`` (``ingests`` aborted, ``blobs`` and ``pieces``
    removed, ``space`` given back, ``packs`` compacted) and how many it has done there
    (of ``total``, when known)."""

    phase: str
    done: int
    total: int | None = None


def collect_garbage(core: StoreCore, grace: float, compact_all: bool = False,
                    ingest_ttl: float | None = None,
                    progress: Callable[[GcProgress], None] | None = None) -> GcReport:
    meta = core.meta
    say = progress or (lambda _p: None)
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
                say(GcProgress("ingests", expired))
    blobs = 0
    say(GcProgress("blobs", 0))
    cutoff = time.time() - grace
    while n := meta.collect_blobs(cutoff):
        blobs += n
        say(GcProgress("blobs", blobs))
    kept, kept_bytes = meta.unlinked_since(cutoff)
    # The SHA-256 states kept for blobs that are gone (cas.digest_states).
    sweep_states(core.root, lambda encoded: meta.blob(f"sha256:{encoded}") is not None)
    pieces = freed = 0
    say(GcProgress("pieces", 0))
    while True:
        n, b = meta.collect_pieces()
        if not n:
            break
        pieces += n
        freed += b
        say(GcProgress("pieces", pieces))
    say(GcProgress("space", 0))
    core.empty_trash()
    compacted = compact_packs(core, full=compact_all,
                              progress=lambda done, total: say(GcProgress("packs", done, total)))
    # A pack file with no row is left over from a crash; rows are written first.
    known = meta.pack_names()
    orphans = 0
    for name in core.packs.names():
        if name not in known and not meta.is_pack_known(name):
            core.packs.delete(name)
            orphans += 1
    return GcReport(blobs, pieces, freed + expired_bytes, orphans, compacted, expired, kept, kept_bytes)


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


@dataclass(frozen=True, slots=True)
class FsckProgress:
    """How far a check has come: blobs and their bytes verified, of the snapshot's."""

    blobs_done: int
    blobs: int
    bytes_done: int
    bytes: int


def check(core: StoreCore, progress: Callable[[FsckProgress], None] | None = None) -> FsckReport:
    """Verify every blob's digest and every piece's BLAKE3, and the bookkeeping, as of one
    consistent moment: uploads and commits may go on meanwhile. ``progress`` is called
    (on this thread) after each blob."""
    check_packs_here(core.meta, core.packs)  # not "every piece damaged" for a wrong directory
    with core.meta.snapshot() as meta:
        return _check(core, meta, progress)


def _miscounted(core: StoreCore, meta: Metadata, damaged: set[bytes]) -> list[str]:
    """Each piece whose reference count differs from the recipes that use it (a second
    pass, key by key: fsck's sum found a difference). A piece no recipe uses is read
    too, unless it was already found damaged."""
    refs: Counter[bytes] = Counter()
    for _, _, packed in meta.iter_blobs():
        refs.update(k for k, _ in decode_recipe(packed))
    out: list[str] = []
    for loc, r in meta.iter_pieces():
        if r != refs.get(loc.key, 0):
            # Too high only leaks space; too low could let GC remove a needed piece.
            out.append(f"piece {loc.key.hex()}: reference count {r}, but {refs.get(loc.key, 0)} "
                       "recipes use it")
            if not refs.get(loc.key) and loc.key not in damaged:
                try:
                    data = core.load(loc)
                except (CasError, OSError) as exc:
                    out.append(f"piece {loc.key.hex()}: unreadable: "
                               f"{exc.what if isinstance(exc, StoreCorrupt) else exc}")
                    continue
                if len(data) != loc.length or blake3.blake3(data).digest() != loc.key:
                    out.append(f"piece {loc.key.hex()}: its bytes do not match its BLAKE3 key "
                               "(damaged on disk)")
    return out


def _weight(key: bytes) -> int:
    return int.from_bytes(key[:16], "little")


def _check(core: StoreCore, meta: Metadata, progress: Callable[[FsckProgress], None] | None
           ) -> FsckReport:
    # No state per piece: a blob's locations are read with it, the pieces' table streams
    # at the end, and reference counts are checked by a sum, over every recipe's entries,
    # of a number taken from each key (128 bits of a BLAKE3 hash), against the sum of the
    # pieces' counts times theirs. Wrong counts make them differ (but for keys that
    # cancel out exactly: negligible odds); only then are the recipes counted key by key,
    # to name the pieces.
    report = FsckReport()
    used = 0
    verified: set[bytes] = set()  # pieces found whole (the first _VERIFIED_KEPT)
    damaged: set[bytes] = set()  # pieces found unreadable or not matching their key
    unread: set[bytes] = set()  # pieces of blobs whose check stopped before them
    lock = threading.Lock()  # the sets, between the threads that read blobs
    totals = meta.stats()
    done = FsckProgress(0, totals["blobs"], 0, totals["logical_bytes"])

    def piece_bytes(loc: Location, problems: list[str]) -> bytes | None:
        key = loc.key
        with lock:
            if key in damaged:
                return None
            known = key in verified
        try:
            data = core.load(loc)
        except (CasError, OSError) as exc:
            with lock:
                first = key not in damaged
                damaged.add(key)
            if first:
                # (fsck is the full report a StoreCorrupt's message asks for)
                why = exc.what if isinstance(exc, StoreCorrupt) else exc
                problems.append(f"piece {key.hex()}: unreadable: {why}")
            return None
        if not known:
            ok = len(data) == loc.length and blake3.blake3(data).digest() == key
            with lock:
                first = key not in damaged
                if not ok:
                    damaged.add(key)
                elif len(verified) < _VERIFIED_KEPT:
                    verified.add(key)  # a piece many blobs share is hashed once
            if not ok:
                if first:
                    problems.append(
                        f"piece {key.hex()}: its bytes do not match its BLAKE3 key (damaged on disk)"
                    )
                return None
        return data

    def verify_blob(digest_text: str, entries: list[tuple[bytes, int]],
                    locations: dict[bytes, Location]) -> list[str]:
        """The problems of one blob (and of the pieces it was first to read)."""
        problems: list[str] = []
        digest = Digest.parse(digest_text)
        h = new_hasher(digest.algorithm)
        for i, (key, _) in enumerate(entries):
            loc = locations.get(key)
            data = None if loc is None else piece_bytes(loc, problems)
            if data is None:
                problems.append(f"blob {digest_text}: piece {key.hex()} is "
                                f"{'missing' if loc is None else 'damaged'}")
                with lock:
                    unread.update(k for k, _ in entries[i + 1:])
                return problems
            h.update(data)  # SHA-256 and BLAKE3 release the GIL: blobs verify in parallel
        if h.hexdigest() != digest.encoded:
            problems.append(f"blob {digest_text}: content does not match its digest")
        return problems

    # The snapshot is read on this thread (its connection's); blobs are verified on
    # others, a few ahead, their problems taken in the snapshot's order.
    workers = min(_FSCK_THREADS, os.cpu_count() or 1)
    pending: deque[tuple[Future[list[str]], int]] = deque()

    def take_one() -> None:
        nonlocal done
        future, size = pending.popleft()
        report.problems.extend(future.result())
        done = replace(done, blobs_done=done.blobs_done + 1, bytes_done=done.bytes_done + size)
        if progress is not None:
            progress(done)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cas-fsck") as pool:
        for digest_text, size, packed in meta.iter_blobs():
            report.blobs_checked += 1
            entries = decode_recipe(packed)
            used += sum(_weight(k) for k, _ in entries)
            if sum(n for _, n in entries) != size:
                known: Future[list[str]] = Future()
                known.set_result([f"blob {digest_text}: recipe length differs from its size {size}"])
                unread.update(k for k, _ in entries)
                pending.append((known, size))
            else:
                locations = meta.locations(k for k, _ in entries)
                pending.append((pool.submit(verify_blob, digest_text, entries, locations), size))
            while len(pending) > 2 * workers:
                take_one()
        while pending:
            take_one()
    counted = 0
    leftover: list[str] = []
    for loc, r in meta.iter_pieces():
        report.pieces_checked += 1
        counted += r * _weight(loc.key)
        if r == 0 or loc.key in unread:  # read by no blob above
            piece_bytes(loc, leftover)
            report.problems.extend(leftover)
            leftover.clear()
        if loc.pack is not None and not meta.is_pack_known(loc.pack):
            report.problems.append(f"piece {loc.key.hex()}: its pack {loc.pack} is not registered")
    if counted != used:
        report.problems.extend(_miscounted(core, meta, damaged))
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
    if meta.trash(limit=1):
        report.notes.append("space of removed pieces is waiting to be freed; 'pybuild storage gc' frees it")
    ingests = meta.list_ingests()
    if ingests:
        report.notes.append(f"{len(ingests)} open ingest(s) (resumable uploads)")
    if core.read_only:
        report.notes.append(
            f"{core.root} is on a read-only file system: checked as it is, nothing can be "
            "repaired or cleaned up there; 'pybuild storage gc' needs it mounted read-write")
    return report
