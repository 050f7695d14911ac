"""Images on disk: OCI image layouts and ``docker save`` archives, to and from the cas.

OCI image layout (image-layout.md)::

    DIR/oci-layout          {"imageLayoutVersion": "1.0.0"}
    DIR/index.json          an index; entries tagged by the org.opencontainers.image.ref.name annotation
    DIR/blobs/<alg>/<hex>   every blob and manifest, named by its digest

Docker archive (``docker save`` / ``docker load``), a tar::

    manifest.json           [{"Config": "<hex>.json", "RepoTags": ["host/name:tag"],
                              "Layers": ["<hex>/layer.tar", ...]}]
    <hex>.json              the image config
    <hex>/layer.tar         each layer as stored (docker load accepts gzip-compressed layers)
    repositories            {"name": {"tag": "<hex of last layer>"}} for old docker versions

A docker archive holds no manifest: reading one builds a Docker schema 2 manifest (OCI if
a layer is zstd), so config and layer digests survive a round trip but the manifest
digest may not. Every blob read from disk is verified against its digest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import re
import secrets
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cas import BlobInfo, Digest, DigestMismatch, Store

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
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
)
from .errors import ClientError
from .progress import Progress
from .refs import InvalidReference, parse_image_ref

if TYPE_CHECKING:
    from .layout_claims import Claims

__all__ = [
    "DOCKER_LAYER_TAR",
    "REF_NAME",
    "LayoutError",
    "OciLayout",
    "as_oci",
    "check_destination",
    "parse_layout_index",
    "read_docker_archive",
    "source_index",
    "write_docker_archive",
]

DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
REF_NAME = "org.opencontainers.image.ref.name"
_CHUNK = 4 << 20
_SOURCE_INDEX = re.compile(r"@[0-9]{1,9}")
_PLACE_TRIES = 5


class LayoutError(ClientError):
    """A layout or archive that is missing, malformed or holds the wrong bytes."""


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
            info = await _import(store, f.read, desc.digest, link, progress, key,
                                 desc.digest.encoded[:12], desc.size)
        except DigestMismatch as exc:
            raise LayoutError(f"{path} does not match its digest {desc.digest}") from exc
        finally:
            f.close()
        if info.size != desc.size:
            raise LayoutError(f"{path} is {info.size} bytes, its descriptor says {desc.size}")

    async def export_blob(self, store: Store, digest: Digest) -> None:
        path = self.blob_path(digest)
        await self._place(path, lambda: store.export(digest, path))

    async def write_bytes(self, digest: Digest, data: bytes) -> None:
        path = self.blob_path(digest)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            _replace_file(path, data)

        await self._place(path, lambda: asyncio.to_thread(write))

    async def _place(self, path: Path, write: Callable[[], Awaitable[None]]) -> None:
        """``path`` written unless there, held by the claims (again if a failed writer took it)."""
        claims = self.claims
        for _ in range(_PLACE_TRIES):
            if await asyncio.to_thread(Path.exists if claims is None else claims.hold, path):
                return
            if claims is not None:  # before: a write cut short (cancelled) is taken back too
                claims.created.add(path)
            try:
                await write()
            except FileNotFoundError:  # its directory went with a failed writer's cleanup
                continue
            if claims is None:
                return
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
    another process may write the same file at the same time."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- docker archives ---------------------------------------------------------------------
def _layer_type(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return DOCKER_LAYER
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return OCI_LAYER_ZSTD
    return DOCKER_LAYER_TAR


async def _import(store: Store, read: Callable[[int], bytes], expected: Digest | None,
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


def _member_label(name: str) -> str:
    """A short label for an archive member (``<hex>/layer.tar``, ``blobs/sha256/<hex>``)."""
    found = re.search(r"[0-9a-f]{12,}", name)
    return found.group(0)[:12] if found else name[-24:]


async def read_docker_archive(path: Path, ref: str | None, store: Store, link: str | None = None,
                              progress: Progress | None = None) -> bytes:
    """Import the image named ``ref`` (or the only image) from a ``docker save`` tar into
    ``store``; returns the manifest (bytes) built for it. ``progress`` shows each layer
    read as a task (``imported``)."""
    try:
        tar = await asyncio.to_thread(tarfile.open, path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise LayoutError(f"cannot read docker archive {path}: {exc}") from exc
    try:
        def member(name: str) -> Any:
            f = tar.extractfile(name)
            if f is None:
                raise LayoutError(f"{path}: {name} is not a file")
            return f

        try:
            entries = json.loads(await asyncio.to_thread(lambda: member("manifest.json").read()))
        except KeyError as exc:
            raise LayoutError(f"{path} is not a docker archive (no manifest.json)") from exc
        entry = _pick(entries, ref, path)
        config = await asyncio.to_thread(lambda: member(entry["Config"]).read())
        config_info = await store.put(config, link=link)
        layers = []
        for name in entry["Layers"]:
            f = await asyncio.to_thread(member, name)
            head: list[bytes] = []

            def read(n: int, f: Any = f, head: list[bytes] = head) -> bytes:
                block: bytes = f.read(n)
                if not head:
                    head.append(block[:4])
                return block

            size = (await asyncio.to_thread(tar.getmember, name)).size
            info = await _import(store, read, None, link, progress, f"{path}:{name}",
                                 _member_label(name), size)
            layers.append(Descriptor(_layer_type(head[0] if head else b""), info.digest, info.size))
    finally:
        await asyncio.to_thread(tar.close)
    oci = any(d.media_type == OCI_LAYER_ZSTD for d in layers)
    manifest = Manifest(
        config=Descriptor(OCI_CONFIG if oci else DOCKER_CONFIG, config_info.digest, len(config)),
        layers=tuple(layers),
        media_type=OCI_MANIFEST if oci else DOCKER_MANIFEST,
    )
    return json.dumps(manifest.to_json(), indent=3).encode()


def source_index(name: str | None) -> int | None:
    """N when ``name`` is ``@N``: an image of a layout or archive named by its place."""
    return int(name[1:]) if name and _SOURCE_INDEX.fullmatch(name) else None


def _pick(entries: Any, ref: str | None, path: Path) -> dict[str, Any]:
    if not isinstance(entries, list) or not entries:
        raise LayoutError(f"{path}: manifest.json lists no images")
    listed = ", ".join(", ".join(e.get("RepoTags") or []) or f"@{i} (untagged)"
                       for i, e in enumerate(entries))
    place = source_index(ref)
    if ref is None and len(entries) == 1:
        return dict(entries[0])
    if ref is None:
        raise LayoutError(f"{path} holds {len(entries)} images ({listed}); name one "
                          "(docker-archive:FILE:REF, or docker-archive:FILE:@N for the N-th from 0)")
    if place is not None and place < len(entries):
        return dict(entries[place])
    for entry in entries:
        if place is None and any(_normalized(tag) == ref for tag in entry.get("RepoTags") or []):
            return dict(entry)
    raise LayoutError(f"{path} has no image {ref} (it has: {listed})")


def _normalized(tag: Any) -> str:
    """A RepoTags entry as :func:`parse_image_ref` spells it: ``docker save`` writes the
    short form Docker shows (``busybox:latest``), the name asked for is normalised
    (``docker.io/library/busybox:latest``), and both name the same image."""
    try:
        return str(parse_image_ref(str(tag)))
    except InvalidReference:
        return str(tag)


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


async def write_docker_archive(path: Path, ref: str | None, manifest: Manifest, store: Store) -> None:
    """Write ``manifest``'s image as a ``docker load``-able tar (replacing ``path``). It is
    written to ``<path>.tmp`` and renamed: a failed write leaves neither a partial
    archive nor the temporary file."""
    check_destination("docker-archive", path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        await _write_archive(path, tmp, ref, manifest, store)
    except BaseException as exc:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        if isinstance(exc, (IsADirectoryError, NotADirectoryError, FileNotFoundError)):
            raise LayoutError(f"cannot write docker-archive:{path}: {exc.strerror}: name a file in "
                              "a directory that exists") from exc
        raise


async def _write_archive(path: Path, tmp: Path, ref: str | None, manifest: Manifest, store: Store) -> None:
    config_name = f"{manifest.config.digest.encoded}.json"
    layer_names = [f"{d.digest.encoded}/layer.tar" for d in manifest.layers]
    index = [{"Config": config_name, "RepoTags": [ref] if ref else [], "Layers": layer_names}]
    f = await asyncio.to_thread(open, tmp, "wb")
    try:
        async def add(name: str, size: int, chunks: Any) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o644, 0
            await asyncio.to_thread(f.write, info.tobuf(format=tarfile.PAX_FORMAT))
            written = 0
            async for chunk in chunks:
                written += len(chunk)
                await asyncio.to_thread(f.write, chunk)
            if written != size:
                raise LayoutError(f"{name}: wrote {written} bytes, expected {size}")
            if size % 512:
                await asyncio.to_thread(f.write, b"\0" * (512 - size % 512))

        async def once(data: bytes) -> Any:
            yield data

        for desc, name in ((manifest.config, config_name), *zip(manifest.layers, layer_names)):
            info = await store.stat(desc.digest)
            if info is None:
                raise LayoutError(f"blob {desc.digest} is not in the local store")
            await add(name, info.size, store.read(desc.digest))
        body = json.dumps(index).encode()
        await add("manifest.json", len(body), once(body))
        if ref and manifest.layers:
            name, _, tag = ref.rpartition(":")
            repos = json.dumps({name: {tag: manifest.layers[-1].digest.encoded}}).encode()
            await add("repositories", len(repos), once(repos))
        await asyncio.to_thread(f.write, b"\0" * 1024)
    finally:
        await asyncio.to_thread(f.close)
    await asyncio.to_thread(os.replace, tmp, path)

