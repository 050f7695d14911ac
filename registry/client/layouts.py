"""OCI image layouts on disk, to and from the cas (image-layout.md)::

    DIR/oci-layout          {"imageLayoutVersion": "1.0.0"}
    DIR/index.json          an index; entries tagged by the org.opencontainers.image.ref.name annotation
    DIR/blobs/<alg>/<hex>   every blob and manifest, named by its digest

Every blob read from disk is verified against its digest. ``docker save`` archives are
:mod:`registry.client.docker_archive`; what both share (the destination checks, ``@N``
names, :func:`import_stream`) is here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cas import BlobInfo, Digest, DigestMismatch, StorageError, Store

from ..oci import (
    DOCKER_CONFIG,
    DOCKER_FOREIGN_LAYER,
    DOCKER_LAYER,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    OCI_MANIFEST,
    Descriptor,
    Index,
)
from .errors import ClientError
from .progress import Progress

if TYPE_CHECKING:
    from .layout_claims import Claims

__all__ = [
    "DOCKER_LAYER_TAR",
    "REF_NAME",
    "LayoutError",
    "OciLayout",
    "as_oci",
    "check_destination",
    "import_stream",
    "parse_layout_index",
    "source_index",
    "unwritable",
]

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 4 << 20
_SOURCE_INDEX = r"@[0-9]{1,9}"  # compiled on first use (re caches it)
_PLACE_TRIES = 5


class LayoutError(ClientError):
    """A layout or archive that is missing, malformed or holds the wrong bytes."""


def unwritable(exc: BaseException, name: str) -> LayoutError | None:
    """The LayoutError naming the destination ``name`` (``oci:DIR``, ``docker-archive:FILE``)
    when ``exc`` is its file system's: full, read-only or not ours to write (a write's
    error names no file, and the local store's own errors are StorageErrors); else None."""
    if isinstance(exc, OSError) and not isinstance(exc, StorageError) and exc.errno in (
            errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        return LayoutError(f"cannot write {name}: {os.strerror(exc.errno).lower()}; nothing of "
                           "it was kept: free space there (or make it writable), or choose "
                           "another destination")
    return None


# Docker schema 2 media types and the OCI types an OCI layout holds instead.
_OCI_TYPES = {
    DOCKER_MANIFEST: OCI_MANIFEST,
    DOCKER_MANIFEST_LIST: OCI_INDEX,
    DOCKER_CONFIG: OCI_CONFIG,
    DOCKER_LAYER: OCI_LAYER_GZIP,
    DOCKER_LAYER_TAR: OCI_LAYER,
    DOCKER_FOREIGN_LAYER: OCI_LAYER_NONDISTRIBUTABLE_GZIP,
}


def as_oci(raw: bytes, children: dict[str, tuple[str, int]] | None = None) -> bytes:
    """A Docker schema 2 manifest (or manifest list) ``raw`` as the OCI manifest (index)
    it corresponds to: the same config and layers under OCI media types, every other
    field kept; ``raw`` itself when it is OCI already. ``children``: for a list, the
    digest and size each entry (by old digest) has after its own conversion.

    An OCI image layout holds OCI types: skopeo, podman and umoci find no image behind a
    Docker one, so copying to ``oci:`` converts, as ``skopeo copy`` does (the manifest's
    digest changes; the blobs are the same)."""
    doc = json.loads(raw)
    if doc.get("mediaType") not in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST):
        return raw
    doc["mediaType"] = _OCI_TYPES[doc["mediaType"]]
    for desc in [doc.get("config") or {}, *(doc.get("layers") or []), *(doc.get("manifests") or [])]:
        kind = desc.get("mediaType")
        if kind in _OCI_TYPES:
            desc["mediaType"] = _OCI_TYPES[kind]
        if children and desc.get("digest") in children:
            desc["digest"], desc["size"] = children[desc["digest"]]
    return json.dumps(doc, separators=(",", ":")).encode()


class OciLayout:
    """An OCI image layout directory (created on first write)."""

    def __init__(self, path: Path, claims: Claims | None = None) -> None:
        self.path = Path(path)
        self.claims = claims  # a writer's (see undone_on_failure): what it holds and wrote

    def blob_path(self, digest: Digest) -> Path:
        return self.path / "blobs" / digest.algorithm / digest.encoded

    def _read_index(self) -> Index:
        try:
            return parse_layout_index((self.path / "index.json").read_bytes())
        except FileNotFoundError as exc:
            raise LayoutError(f"{self.path} is not an OCI layout (no index.json)") from exc
        except ValueError as exc:
            raise LayoutError(f"{self.path}/index.json: {exc}") from exc

    async def find(self, tag: str | None) -> Descriptor:
        """The index entry named ``tag`` (or the only entry when ``tag`` is None); ``@N``
        is the N-th entry (from 0), as skopeo names an image of a layout by its place."""
        index = await asyncio.to_thread(self._read_index)
        entries = index.manifests
        names = [(e.annotations or {}).get(REF_NAME) for e in entries]
        listed = ", ".join(name or f"@{i} {e.digest.encoded[:12]} (untagged)"
                           for i, (e, name) in enumerate(zip(entries, names, strict=True)))
        place = source_index(tag)
        if not entries:
            raise LayoutError(f"{self.path} holds no image (its index.json lists none): copy one there")
        if tag is None and len(entries) == 1:
            return entries[0]
        if tag is None:
            raise LayoutError(f"{self.path} holds {len(entries)} images ({listed}); name one "
                              "(oci:DIR:TAG, or oci:DIR:@N for the N-th from 0)")
        if place is not None:
            if place < len(entries):
                return entries[place]
            raise LayoutError(f"{self.path} has no image {tag} (it has: {listed or 'none'})")
        for entry, name in zip(entries, names, strict=True):
            if name == tag:
                return entry
        raise LayoutError(f"{self.path} has no image {tag!r} (it has: {listed or 'none'})")

    async def read_bytes(self, desc: Descriptor) -> bytes:
        data = await asyncio.to_thread(self.blob_path(desc.digest).read_bytes)
        if len(data) != desc.size or Digest.of(data, desc.digest.algorithm) != desc.digest:
            raise LayoutError(f"{self.blob_path(desc.digest)} does not match {desc.digest}")
        return data

    async def import_blob(self, store: Store, desc: Descriptor, link: str | None = None,
                          progress: Progress | None = None) -> None:
        """Copy the blob into ``store``, verified against digest and size; ``progress``
        shows it as a task (``imported``), or as ``exists`` when the store had it."""
        key = str(desc.digest)
        if await store.stat(desc.digest) is not None:
            if link:
                await store.link(link, desc.digest)
            if progress is not None:
                progress.start(key, desc.digest.encoded[:12], desc.size)
                progress.finish(key, "exists")
            return
        path = self.blob_path(desc.digest)
        if not path.exists():
            raise LayoutError(f"{self.path} lacks blob {desc.digest} ({path} is missing)")
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            raise LayoutError(f"cannot read {path}: {exc}") from exc
        try:
            info = await import_stream(store, f.read, desc.digest, link, progress, key,
                                 desc.digest.encoded[:12], desc.size)
        except DigestMismatch as exc:
            raise LayoutError(f"{path} does not match its digest {desc.digest}") from exc
        finally:
            f.close()
        if info.size != desc.size:
            raise LayoutError(f"{path} is {info.size} bytes, its descriptor says {desc.size}")

    async def export_blob(self, store: Store, digest: Digest, progress: Progress | None = None,
                          size: int = 0) -> str:
        """Write the blob from ``store`` into the layout; ``exported``, or ``exists`` when
        the layout had it. ``progress`` shows it as a task of ``size`` bytes (a copy from
        the local store has no other: its bytes are the ones this writes)."""
        path, key = self.blob_path(digest), str(digest)
        if progress is not None:
            progress.start(key, digest.encoded[:12], size)
        try:
            written = await self._place(path, lambda: store.export(digest, path))
        except BaseException as exc:
            if progress is not None:
                progress.fail(key, exc)
            raise
        status = "exported" if written else "exists"
        if progress is not None:
            progress.advance(key, size if written else 0)
            progress.finish(key, status)
        return status

    async def write_bytes(self, digest: Digest, data: bytes) -> None:
        path = self.blob_path(digest)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _replace_file(path, data)

        await self._place(path, lambda: asyncio.to_thread(write))

    async def _place(self, path: Path, write: Callable[[], Awaitable[None]]) -> bool:
        """``path`` written unless there, held by the claims (again if a failed writer took
        it); whether it was written."""
        claims, wrote = self.claims, False
        for _ in range(_PLACE_TRIES):
            if await asyncio.to_thread(Path.exists if claims is None else claims.hold, path):
                return wrote
            if claims is not None:  # before: a write cut short (cancelled) is taken back too
                claims.created.add(path)
            # Run to its end even when this copy is cancelled (a blob beside it failed): a
            # worker thread of a write cut short could still put the file in place after
            # the failed writer's cleanup; the cleanup waits for it (Claims.writing).
            writing = asyncio.ensure_future(write())
            try:
                await asyncio.shield(writing)
            except asyncio.CancelledError:
                writing.add_done_callback(_retrieved)  # its failure is the cancelled copy's
                if claims is not None:
                    claims.writing.add(writing)
                raise
            except FileNotFoundError:  # its directory went with a failed writer's cleanup
                continue
            wrote = True
            if claims is None:
                return True
        raise LayoutError(f"{path} was removed {_PLACE_TRIES} times while this copy wrote it: "
                          "another process is removing blobs from the layout; retry")

    async def tag(self, desc: Descriptor, tag: str | None) -> None:
        """Add ``desc`` to index.json, named ``tag`` (:func:`_entries_with`)."""
        await self.update(lambda entries: _entries_with(entries, desc, tag))

    async def update(self, change: Callable[[list[Descriptor]], list[Descriptor]]) -> None:
        """index.json's entries made ``change(entries)``, its other fields kept (LayoutError: unreadable)."""

        def update() -> None:
            self.path.mkdir(parents=True, exist_ok=True)
            # Other processes may tag here at once: one read-modify-write of index.json at
            # a time, under a flock of the layout directory, so none loses another's entry.
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked_update()
            finally:
                os.close(fd)

        def locked_update() -> None:
            layout = self.path / "oci-layout"
            if not layout.is_file():
                _replace_file(layout, b'{"imageLayoutVersion":"1.0.0"}')
            if (self.path / "index.json").exists():
                try:
                    index = self._read_index()
                except LayoutError as exc:
                    raise LayoutError(f"{exc}: its images would be lost; repair or remove "
                                      f"{self.path}/index.json, or write another layout") from exc
            else:
                index = Index((), media_type=OCI_INDEX)
            entries = change(list(index.manifests))
            _replace_file(self.path / "index.json", dataclasses.replace(
                index, manifests=tuple(entries), media_type=index.media_type or OCI_INDEX).to_bytes())

        await asyncio.to_thread(update)


def _retrieved(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def parse_layout_index(raw: bytes) -> Index:
    """A layout's index.json; ``"manifests": null`` (``umoci init`` writes it) is no entry."""
    doc = json.loads(raw)
    return Index.from_json({**doc, "manifests": []} if isinstance(doc, dict) and "manifests" in doc
                           and doc["manifests"] is None else doc)


def _entries_with(entries: list[Descriptor], desc: Descriptor, tag: str | None) -> list[Descriptor]:
    """``entries`` of an index.json with ``desc`` added as skopeo adds it: the entry that
    had the name ``tag`` keeps its place untagged (its image stays in the layout, by its
    place ``@N``), and an untagged entry of the same digest is replaced, not repeated."""
    named = desc
    if tag is not None:
        for i, entry in enumerate(entries):
            if (entry.annotations or {}).get(REF_NAME) == tag:
                entries[i] = dataclasses.replace(entry, annotations={
                    k: v for k, v in (entry.annotations or {}).items() if k != REF_NAME} or None)
                break
        named = dataclasses.replace(desc, annotations={**(desc.annotations or {}), REF_NAME: tag})
    for i, entry in enumerate(entries):
        if entry.digest == desc.digest and REF_NAME not in (entry.annotations or {}):
            entries[i] = named
            return entries
    return [*entries, named]


def _replace_file(path: Path, data: bytes) -> None:
    """``path`` replaced by ``data`` at once, through a temporary file of this writer's own:
    another process may write the same file at the same time. Synced before the rename:
    a power loss leaves the old file or the new one, never an empty one by its name."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def import_stream(store: Store, read: Callable[[int], bytes], expected: Digest | None,
                  link: str | None, progress: Progress | None, key: str, label: str,
                  size: int) -> BlobInfo:
    """One blob from a blocking ``read`` into ``store`` (read in a thread, verified
    against ``expected`` when given), shown as task ``key`` of ``progress`` if given."""
    ing = await store.begin_ingest(algorithm=expected.algorithm if expected else "sha256")
    if progress is not None:
        progress.start(key, label, size)
    try:
        while block := await asyncio.to_thread(read, _CHUNK):
            await ing.write(block)
            if progress is not None:
                progress.advance(key, len(block))
        info = await ing.commit(expected, link=link)
    except BaseException as exc:
        await ing.abort()
        if progress is not None:
            progress.fail(key, exc)
        raise
    if progress is not None:
        progress.finish(key, "imported")
    return info


def source_index(name: str | None) -> int | None:
    """N when ``name`` is ``@N``: an image of a layout or archive named by its place."""
    return int(name[1:]) if name and re.fullmatch(_SOURCE_INDEX, name) else None


def check_destination(kind: str, path: Path) -> None:
    """LayoutError naming the destination and what to name instead when ``path`` cannot be
    an OCI layout (``oci``) or a docker archive (``docker-archive``): checked before any
    blob moves, where the OS would say only ``[Errno 21] Is a directory: ...tmp``."""
    if kind == "docker-archive":
        if path.is_dir():
            raise LayoutError(f"docker-archive:{path} is a directory: name the archive file to "
                              f"write (docker-archive:{path / 'image.tar'})")
        if not path.parent.is_dir():
            raise LayoutError(f"docker-archive:{path}: directory {path.parent} does not exist; "
                              "create it, or name a file in a directory that exists")
    elif kind == "oci":
        if path.exists() and not path.is_dir():
            raise LayoutError(f"oci:{path} is a file, not a directory: an OCI layout is a directory; "
                              "name a new or existing layout directory (oci:DIR[:TAG])")
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise LayoutError(f"oci:{path}: {parent} is a file, not a directory; name a "
                                      "layout directory whose parents are directories")
                break


