"""The local image store: images in the shared ``cas.Store``, names in ``images.db``.

Every blob of an image (manifest, config, layers; for an index, its child manifests and
their blobs) is linked in the store with holder ``image:<ref>``, so ``pybuild storage gc``
keeps it until ``pybuild rmi`` unlinks it. ``images.db`` (SQLite, in the storage dir)::

    images(ref TEXT PRIMARY KEY, digest, media_type, size, created)  ref -> manifest digest
    pulls(digest TEXT PRIMARY KEY, ingest_id, updated)   open ingests of interrupted pulls
    pushes(key TEXT PRIMARY KEY, location, updated)      upload sessions of interrupted pushes
    untagged(ref TEXT PRIMARY KEY)                       references by digest rmi removed

``ref`` is the normalised reference (``host/name:tag`` or ``host/name@digest``). An image a
tag names is also named ``host/name@digest`` in its repository (docker's RepoDigests), until
``pybuild rmi`` removes that reference (:meth:`ImageStore.untag_digest`, table
``untagged``); naming the image in that repository again (a pull, a push, a tag) gives it
back.

Naming and removing an image (its links, then its row) is one step for every process on the
storage directory: :meth:`ImageStore.put` and :meth:`ImageStore.remove` hold an exclusive
flock on ``images.lock`` beside ``images.db``. Without it two processes naming different
images ``ref`` at once (two builds tagging ``app``, or ``rmi app`` while a pull names it)
could each unlink the other's blobs and leave ``ref`` naming an image whose blobs
``pybuild storage gc`` then removes.

Every use of the ``images.db`` connection holds the store's lock, and :meth:`ImageStore.close`
takes it too: close waits for the query in flight, and a call after it raises
``cas.StoreClosed``. A full or unwritable storage directory is ``cas.StorageFull`` /
``cas.StorageNotWritable``, naming the path. Opened ``reading`` (for commands that only
read: ``images``, ``inspect``, ``history``, a push or copy out of the store), a storage
directory on a read-only file system opens read-only (``cas.read_only``): an interrupted
push then keeps no upload session to resume, and every other write is StorageNotWritable.

The builder's entry points: :meth:`ImageStore.get` (manifest + config of a local image),
:meth:`ImageStore.put` (record an image whose blobs are in the store) and
:meth:`ImageStore.open_blob` (stream a blob).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cas import Digest, Store, StoreConfig, open_store
from cas.errors import CasError, StoreClosed, mapped_error
from cas.holders import image_holder
from cas.location import default_storage_dir
from cas.sqlite_db import open_wal_database

from ..oci import INDEX_TYPES, MANIFEST_TYPES, ImageConfig, Index, Manifest, Platform, parse_manifest
from .errors import ClientError

__all__ = ["PUSH_SESSION_DAYS", "ImageNotFound", "ImageStore", "LocalImage", "select_platform"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    ref TEXT PRIMARY KEY, digest TEXT NOT NULL, media_type TEXT NOT NULL,
    size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pulls (
    digest TEXT PRIMARY KEY, ingest_id TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pushes (
    key TEXT PRIMARY KEY, location TEXT NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS untagged (ref TEXT PRIMARY KEY);
"""
SCHEMA_VERSION = 2  # images.db's (cas.sqlite_db.migrate_schema): raise it with the schema


# A store the image store opens itself (``pybuild pull/push/copy``) runs one worker
# thread per core plus one: the ingest's hashing and cutting are CPU-bound, and more
# threads than cores only add switching (a cold pull of 10 x 50 MiB on 2 cores: 3
# threads 5-10 % faster than 8, measured with bench/client_bench.py's image). Its packs
# are written with O_DIRECT where the filesystem allows it (synced at each commit, as
# buffered packs are): on this kind of machine a buffered write spends more CPU copying
# into the page cache than the pull spends on SHA-256, and the kernel's writeback then
# reaches the disk slower than direct writes do (512 MiB: 233 MB/s buffered + fdatasync,
# 802 MB/s O_DIRECT). A cold pull of the client image (10 x 52 MB): system CPU 0.35 s
# instead of 0.9-1.3 s. A pulled layer read again soon (a build extracting it) then
# comes from the disk instead of the page cache.
_WORKERS = min(8, (os.cpu_count() or 2) + 1)
# Seconds close() waits for interrupted transfers to keep or drop what they fetched.
_FINISH_WAIT = 30.0
# Days after which an interrupted push's upload session is forgotten: registries purge
# idle sessions sooner (Distribution after 7 days, pybuild serve after 1).
PUSH_SESSION_DAYS = 7


class ImageNotFound(ClientError, LookupError):
    """No local image has that reference; the message says how to get one."""


@dataclass(frozen=True, slots=True)
class LocalImage:
    ref: str
    digest: Digest
    media_type: str
    size: int
    created: float


def select_platform(index: Index, platform: str | None) -> Any:
    """The index entry for ``platform`` (``os/arch[/variant]``, as ``--platform`` takes it;
    default: this machine's), as containerd and Docker pick it: the first entry of that OS
    and architecture (and variant, when one is asked for), else the first manifest or
    index entry that names no platform. ImageNotFound, listing what the index offers, when
    there is none: an image of another architecture is never taken in its place."""
    want = Platform.parse(platform) if platform else Platform.host()

    def matches(p: Platform) -> bool:
        try:
            have = Platform.parse(f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else ""))
        except ValueError:
            return False
        return ((have.os, have.architecture) == (want.os, want.architecture)
                and (want.variant is None or have.variant == want.variant))

    for entry in index.manifests:
        if entry.platform is not None and matches(entry.platform):
            return entry
    # An entry of another media type is a blob, not an image: BuildKit's registry cache
    # is an index of layers and a cache config, none of which names a platform.
    for entry in index.manifests:
        if entry.platform is None and entry.media_type in MANIFEST_TYPES | INDEX_TYPES:
            return entry
    offered = ", ".join(str(d.platform) for d in index.manifests if d.platform is not None)
    if not offered and not any(d.media_type in MANIFEST_TYPES | INDEX_TYPES for d in index.manifests):
        kinds = ", ".join(sorted({d.media_type for d in index.manifests}))
        raise ImageNotFound(
            f"the index lists no image manifest, only blobs ({kinds or 'nothing'}): it is not "
            "an image (a build cache, or another artifact), so there is nothing to pull")
    raise ImageNotFound(
        f"no manifest for platform {want} in the index (it has: {offered or 'none'}); "
        "name one with --platform")


class ImageStore:
    """Local images over an open ``cas.Store``. Open with :meth:`open`; close when done."""

    def __init__(self, store: Store, db: sqlite3.Connection, owns_store: bool,
                 path: Path | None = None) -> None:
        self.store = store
        self._db = db
        self._path = path if path is not None else store.root / "images.db"
        self._lock = threading.Lock()
        self._closed = False
        self._owns_store = owns_store
        self._finishing: set[asyncio.Task[Any]] = set()
        self._dead_transfers_forgotten = False

    @classmethod
    async def open(cls, root: Path | None = None, *, store: Store | None = None,
                   reading: bool = False) -> ImageStore:
        """Open (creating) the store at ``root`` (default: the cas default storage dir).
        ``reading``: the caller only reads images (see the module docstring)."""
        root = Path(root) if root is not None else (store.root if store else default_storage_dir())
        owns = store is None
        if store is None:
            store = await open_store(StoreConfig(root, workers=_WORKERS, digest_states=True,
                                                 reading=reading))

        path = root / "images.db"
        read_only = store.core.read_only

        def connect() -> sqlite3.Connection:
            return open_wal_database(path, _SCHEMA, root, SCHEMA_VERSION, read_only=read_only)

        try:
            db = await asyncio.to_thread(connect)
        except BaseException:
            if owns:
                await store.close()
            raise
        return cls(store, db, owns, path)

    def finish(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``work`` (what an interrupted transfer keeps or drops) to its end even when
        its caller is cancelled again: :meth:`close` waits for it, so it never meets a
        closed store, and its failure is dropped there (the interruption it cleans up
        after is what the caller reports)."""
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def close(self) -> None:
        """Wait for the query in flight and the work handed to :meth:`finish` (at most
        ``_FINISH_WAIT`` seconds), close ``images.db`` (and the store, if this opened
        it). Later calls raise StoreClosed; closing twice is harmless."""
        if self._finishing:
            await asyncio.wait(set(self._finishing), timeout=_FINISH_WAIT)
            for task in self._finishing:
                task.cancel()
            for task in list(self._finishing):
                with contextlib.suppress(BaseException):
                    await task

        def close() -> bool:
            with self._lock:
                if self._closed:
                    return False
                self._closed = True
                self._db.close()
                return True

        if await asyncio.to_thread(close) and self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            with self._lock:
                if self._closed:
                    raise StoreClosed(f"image store {self._path}")
                try:
                    return self._db.execute(query, args).fetchall()
                except (sqlite3.Error, OSError) as exc:
                    mapped = mapped_error(exc, self._path, self._path.parent)
                    if mapped is exc:
                        raise
                    raise mapped from exc

        return await asyncio.to_thread(run)

    # --- images --------------------------------------------------------------------------
    async def resolve(self, ref: str) -> LocalImage | None:
        rows = await self._sql("SELECT ref, digest, media_type, size, created FROM images WHERE ref=?", ref)
        if not rows:
            return None
        r = rows[0]
        return LocalImage(r[0], Digest.parse(r[1]), r[2], r[3], r[4])

    async def by_id(self, text: str) -> list[LocalImage]:
        """The images whose manifest digest is ``text`` or begins with it (an image ID as
        ``pybuild images`` shows it: ``9abf5f3c12f1``, ``sha256:9abf...``; at least 4 hex
        digits, as Docker's short IDs), one per name; [] when ``text`` is no ID. When no
        manifest digest matches, the images whose config digest does: Docker's image ID,
        which ``build --iidfile`` writes (``pybuild tag $(cat iid) app:1`` as with docker)."""
        hex_part = text.removeprefix("sha256:").lower()
        if not 4 <= len(hex_part) <= 64 or any(c not in "0123456789abcdef" for c in hex_part):
            return []
        rows = await self._sql("SELECT ref, digest, media_type, size, created FROM images "
                               "WHERE substr(digest, 1, ?) = ? ORDER BY ref",
                               len(hex_part) + 7, f"sha256:{hex_part}")
        if rows:
            return [LocalImage(r[0], Digest.parse(r[1]), r[2], r[3], r[4]) for r in rows]
        found = []
        for image in await self.list():
            with contextlib.suppress(CasError, ValueError):  # a damaged one is no match
                _, obj, _ = await self.manifest(image.digest)
                if isinstance(obj, Manifest) and str(obj.config.digest).startswith(
                        f"sha256:{hex_part}"):
                    found.append(image)
        return found

    async def list(self) -> list[LocalImage]:
        rows = await self._sql("SELECT ref, digest, media_type, size, created FROM images ORDER BY ref")
        return [LocalImage(r[0], Digest.parse(r[1]), r[2], r[3], r[4]) for r in rows]

    async def manifest(self, digest: Digest) -> tuple[str, Manifest | Index, bytes]:
        """``(media_type, object, raw bytes)`` of a manifest or index in the store."""
        raw = await self.store.read_bytes(digest)
        media_type, obj = parse_manifest(raw, None)
        return media_type, obj, raw

    async def get(self, ref: str, platform: str | None = None) -> tuple[Manifest, ImageConfig]:
        """The image manifest and config of local image ``ref`` (an index is resolved to
        ``platform``'s manifest). Raises :class:`ImageNotFound`."""
        image = await self.resolve(ref)
        if image is None:
            raise ImageNotFound(f"no local image {ref}; pull it first (pybuild pull {ref})")
        _, obj, _ = await self.manifest(image.digest)
        if isinstance(obj, Index):
            entry = select_platform(obj, platform)
            _, obj, _ = await self.manifest(entry.digest)
            if not isinstance(obj, Manifest):
                raise ImageNotFound(f"{ref}: nested indexes are not supported")
        config = ImageConfig.parse(await self.store.read_bytes(obj.config.digest))
        return obj, config

    async def put(self, ref: str, manifest: bytes, media_type: str | None = None) -> Digest:
        """Record ``ref`` -> ``manifest`` (storing the manifest bytes). Every blob it needs
        must already be in the store (nondistributable layers excepted); links them all
        with holder ``image:<ref>`` and drops the links of the image ``ref`` named before."""
        kind, obj = parse_manifest(manifest, media_type)
        info = await self.store.put(manifest)
        needed = {info.digest} | await self._closure(obj)
        name = image_holder(ref)
        async with self._naming():
            for digest in needed:
                await self.store.link(name, digest)
            for digest in set(await self.store.linked(name)) - needed:
                await self.store.unlink(name, digest)
            # images.db syncs its commits, the store's may wait for a checkpoint: a power
            # loss must not keep the image's name and take back its blobs.
            await asyncio.to_thread(self.store.core.make_durable)
            await self._sql(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?)",
                ref, str(info.digest), kind, len(manifest), time.time(),
            )
            repository = ref.split("@", 1)[0]
            if ":" in repository.rpartition("/")[2]:
                repository = repository.rpartition(":")[0]
            await self._sql("DELETE FROM untagged WHERE ref=?", f"{repository}@{info.digest}")
        return info.digest

    async def untag_digest(self, ref: str) -> bool:
        """Remove the reference by digest ``ref`` (``host/name@digest``) of an image a tag
        of its repository names, as ``docker rmi`` removes a RepoDigests entry; False when
        it was removed before (and nothing named the image there since)."""
        async with self._naming():
            if await self._sql("SELECT ref FROM untagged WHERE ref=?", ref):
                return False
            await self._sql("INSERT INTO untagged VALUES (?)", ref)
        return True

    @contextlib.asynccontextmanager
    async def _naming(self) -> AsyncIterator[None]:
        """Hold ``images.lock`` exclusively: no other process (or task) names or removes
        an image meanwhile (the module docstring says why)."""
        path = self._path.with_name("images.lock")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            mapped = mapped_error(exc, path, path.parent)
            if mapped is exc:
                raise
            raise mapped from exc
        locking = asyncio.ensure_future(asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX))
        try:
            await asyncio.shield(locking)
        except BaseException:
            # Cancelled while a worker thread waits: the descriptor (and the lock, if the
            # thread takes it after all) goes once the thread is done with it.
            locking.add_done_callback(lambda _: os.close(fd))
            raise
        try:
            yield
        finally:
            os.close(fd)  # drops the lock

    async def _closure(self, obj: Manifest | Index) -> set[Digest]:
        out: set[Digest] = set()
        if isinstance(obj, Index):
            for entry in obj.manifests:
                if entry.media_type not in INDEX_TYPES and await self.store.stat(entry.digest) is None:
                    continue  # a platform that was not copied
                if entry.media_type not in MANIFEST_TYPES | INDEX_TYPES:
                    out.add(entry.digest)  # a blob (a build cache's layer or config)
                    continue
                _, child, _ = await self.manifest(entry.digest)
                out.add(entry.digest)
                out |= await self._closure(child)
            return out
        for desc in obj.references():
            if await self.store.stat(desc.digest) is None:
                if desc.nondistributable:
                    continue
                raise ImageNotFound(f"blob {desc.digest} of the image is not in the local store")
            out.add(desc.digest)
        return out

    async def remove(self, ref: str) -> bool:
        """Forget ``ref`` and unlink its blobs (``pybuild storage gc`` reclaims the space)."""
        async with self._naming():
            if await self.resolve(ref) is None:
                return False
            name = image_holder(ref)
            for digest in await self.store.linked(name):
                await self.store.unlink(name, digest)
            await self._sql("DELETE FROM images WHERE ref=?", ref)
        return True

    def open_blob(self, digest: Digest, offset: int = 0) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` (cas ``BlobUnknown`` if absent)."""
        return self.store.read(digest, offset)

    # --- resumable transfers -------------------------------------------------------------
    def claim_ingest(self, ingest_id: str) -> int | None:
        """Claim the open ingest ``ingest_id`` for a transfer of this process (an flock,
        as a descriptor to :meth:`release_ingest`); None when another process's transfer
        holds it. An interrupted pull is resumed only under its claim: two processes
        writing one ingest (two pulls of the blob at once, the second finding the first's
        ingest in ``pulls``) would corrupt the blob they commit."""
        path = self._claim_path(ingest_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # no inode left for it: the store's own words for that
            mapped = mapped_error(exc, path, self._path.parent)
            if mapped is exc:
                raise
            raise mapped from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def release_ingest(self, ingest_id: str, claim: int) -> None:
        self._claim_path(ingest_id).unlink(missing_ok=True)
        os.close(claim)  # drops the flock

    def _claim_path(self, ingest_id: str) -> Path:
        # not "<id>.*": the store removes those with the ingest's tail files
        return self._path.parent / "ingests" / f".pull-{ingest_id}.lock"

    async def forget_dead_transfers(self) -> None:
        """Forget the interrupted pulls whose ingest is no longer open, and the upload
        sessions of interrupted pushes older than any registry keeps one
        (:data:`PUSH_SESSION_DAYS`). A transfer killed (SIGKILL, a CI job's timeout)
        leaves its ``pulls`` or ``pushes`` row behind, and a pull its claim file; once
        ``pybuild storage gc`` or the ingest TTL has ended the ingest, nothing else would
        remove them unless the same blob is moved again (one file and one row per killed
        transfer, for ever). Once per image store, before its first transfer. The claims
        and rows are read before the open ingests are: an ingest begins before its claim
        and its row exist, so one not open then has ended; a claim still held (flock) is
        left alone."""
        if self._dead_transfers_forgotten or self.store.core.read_only:
            return  # (read-only: nothing can be forgotten there, and no transfer added any)
        self._dead_transfers_forgotten = True
        await self._sql("DELETE FROM pushes WHERE updated < ?", time.time() - PUSH_SESSION_DAYS * 86400)
        claims = await asyncio.to_thread(
            lambda: list(self._claim_path("x").parent.glob(".pull-*.lock")))
        rows = await self._sql("SELECT digest, ingest_id FROM pulls")
        open_ids = {info.id for info in await self.store.list_ingests()}
        for digest, ingest_id in rows:
            if ingest_id not in open_ids:
                await self._sql("DELETE FROM pulls WHERE digest=? AND ingest_id=?", digest, ingest_id)

        def unlink_dead() -> None:
            for path in claims:
                if path.name[len(".pull-"):-len(".lock")] in open_ids:
                    continue
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    continue  # released meanwhile
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink(missing_ok=True)
                except OSError:
                    pass  # still held: its transfer is ending
                finally:
                    os.close(fd)

        await asyncio.to_thread(unlink_dead)

    async def pending_pull(self, digest: Digest) -> str | None:
        rows = await self._sql("SELECT ingest_id FROM pulls WHERE digest=?", str(digest))
        return rows[0][0] if rows else None

    async def set_pending_pull(self, digest: Digest, ingest_id: str | None) -> None:
        if ingest_id is None:
            await self._sql("DELETE FROM pulls WHERE digest=?", str(digest))
        else:
            await self._sql("INSERT OR REPLACE INTO pulls VALUES (?, ?, ?)", str(digest), ingest_id, time.time())

    async def pending_push(self, key: str) -> str | None:
        rows = await self._sql("SELECT location FROM pushes WHERE key=?", key)
        return rows[0][0] if rows else None

    async def set_pending_push(self, key: str, location: str | None) -> None:
        """Record (None: forget) the upload session of a push; a read-only store keeps
        none (a push out of it starts its uploads anew after an interruption)."""
        if self.store.core.read_only:
            return
        if location is None:
            await self._sql("DELETE FROM pushes WHERE key=?", key)
        else:
            await self._sql("INSERT OR REPLACE INTO pushes VALUES (?, ?, ?)", key, location, time.time())
