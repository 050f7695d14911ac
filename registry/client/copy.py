"""Copying images between transports: registries, the local store, OCI layouts, archives.

Transports (the ``SRC``/``DST`` syntax of ``pybuild copy``, as skopeo spells them)::

    docker://REF  or a bare REF      a registry ([host[:port]/]name[:tag][@digest])
    local:REF                        pybuild's local image store (``pybuild images``)
    oci:DIR[:TAG]                    an OCI image layout directory
    oci-archive:FILE[:TAG]           the same in a tar (:mod:`registry.client.oci_archive`)
    docker-archive:FILE[:REF]        a ``docker save`` tarball (REF name[:tag], no digest)

The other transports skopeo knows are refused by name
(:func:`~registry.client.endpoints.check_transport`), never read as Docker Hub
references. A destination named by digest must get a manifest of that digest
(:meth:`_Copy._check_digest`).

Blobs the destination already has are skipped, and a registry-to-registry copy within one
registry mounts instead of transferring. A blob copied to a registry from another
registry or an OCI layout, and not in the local store, is streamed: read from its source
(by Range from the offset a retried upload continues at) and hashed as it is sent, with
no local copy - unless the destination takes piece-level pushes and holds earlier
versions (bases): then the blob is fetched into the local store, cut there, and only the
pieces the destination lacks are sent (:mod:`registry.client.push_pieces`). Every other
blob passes through the local ``cas.Store`` (where it is
verified, and where its pieces serve later incremental pulls). ``pull`` is
``copy REF local:REF``, ``push`` is ``copy local:REF REF``.

An index is reduced to one platform's manifest (``platform``, default this machine's:
:func:`~registry.client.image_store.select_platform`) unless ``all_platforms`` is set,
which copies the index and every manifest; entries of an index that are blobs, not
manifests (a BuildKit registry cache), are copied as blobs (:mod:`.index_entries`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cas import Digest
from cas.holders import HolderKind, image_holder, parse_holder
from cas.lease import held

from ..errors import RegistryError
from ..oci import DOCKER_CONFIG, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, Descriptor, Index, Manifest, parse_manifest
from .docker_archive import read_docker_archive, write_docker_archive
from .endpoints import Endpoint, check_transport, parse_endpoint
from .errors import ClientError
from .image_store import ImageNotFound, ImageStore, select_platform
from .index_entries import read_index_entries
from .layout_claims import undone_on_failure
from .layouts import LayoutError, OciLayout, as_oci, check_destination, source_index
from .oci_archive import unpacked
from .progress import Progress
from .pull import PieceSources, TransferOptions, local_piece_sources, pull_blob
from .push import PIECE_PUSH_MIN, push_blob
from .push_pieces import destination_tags, piece_bases
from .refs import ImageRef, InvalidReference, parse_image_ref
from .remote import RegistryClient
from .transfer import DEFAULT_JOBS, gather_or_cancel

# A streamed blob is read from its source this much at a time.
_STREAM_READ = 4 << 20
# HEADs of the destination's blobs in flight at once.
_HEADS = 16

__all__ = ["CopyError", "CopyOptions", "CopyResult", "Endpoint", "check_transport", "copy_image",
           "file_source", "parse_endpoint", "registry_source"]


class CopyError(ClientError, ValueError):
    """A copy that cannot be done as asked (the destination names something else than
    what would be written there); the message says what to ask instead."""


@dataclass(frozen=True, slots=True)
class CopyOptions:
    platform: str | None = None
    all_platforms: bool = False
    jobs: int = DEFAULT_JOBS
    transfer: TransferOptions = field(default_factory=TransferOptions)


@dataclass(frozen=True, slots=True)
class CopyResult:
    digest: Digest  # of the manifest (or index) written to the destination
    media_type: str
    blobs: dict[str, str] = field(default_factory=dict)  # digest -> exists/pulled/pushed/...


class _Slot:
    """One of the ``jobs`` places of blobs being fetched at once, which a blob gives up
    early when it needs the network no more: one assembled from its recipe, once its
    missing pieces have arrived (hashing the pieces the store holds, and the commit,
    would otherwise keep the next blob's fetches waiting)."""

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self._held = False

    async def __aenter__(self) -> _Slot:
        await self._sem.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._sem.release()


class _Copy:
    def __init__(self, src: Endpoint, dst: Endpoint, images: ImageStore, client: RegistryClient,
                 progress: Progress, options: CopyOptions) -> None:
        self.src, self.dst, self.images, self.client = src, dst, images, client
        self.progress, self.options = progress, options
        self.store = images.store
        # Blobs being fetched (into the local store) and blobs being sent to a registry are
        # limited separately: a blob fetched waits for a free upload, not the other blobs'
        # fetches for the uploads before them (the two overlap, as in a streaming copy).
        self.sem = asyncio.Semaphore(max(1, options.jobs))
        self.push_sem = asyncio.Semaphore(max(1, options.jobs))
        # Whether the destination has a blob is asked of all blobs at once (a HEAD is a
        # round trip and no bytes), not in the turns of the uploads.
        self.head_sem = asyncio.Semaphore(_HEADS)
        self.link = image_holder(str(dst.ref)) if dst.kind == "local" else None
        self.recipes = False
        self._sources: PieceSources | None = None
        self._sources_lock = asyncio.Lock()
        self.statuses: dict[str, str] = {}
        self._bases: list[Digest] | None = None
        self._bases_lock = asyncio.Lock()
        self.dst_layout: OciLayout | None = None  # an oci: destination, as this writer holds it

    async def read_manifest(self, desc: Descriptor | None) -> tuple[bytes, str]:
        """The source's top manifest (``desc`` None) or the manifest ``desc`` names."""
        src = self.src
        if src.kind == "registry":
            assert src.ref is not None
            ref = src.ref if desc is None else src.ref.with_digest(desc.digest)
            try:
                body, media_type, _ = await self.client.get_manifest(ref)
            except RegistryError as exc:
                if desc is None:  # the name given: what is wrong with it
                    await self.client.explain_missing(ref, exc)
                raise
            return body, media_type
        if src.kind == "local":
            digest = desc.digest if desc else None
            if digest is None:
                image = await self.images.resolve(str(src.ref))
                if image is None:
                    raise ImageNotFound(f"no local image {src.ref}; see pybuild images")
                digest = image.digest
            media_type, _, raw = await self.images.manifest(digest)
            return raw, media_type
        if src.kind == "oci":
            assert src.path is not None
            layout = OciLayout(src.path)
            desc = desc or await layout.find(src.name)
            return await layout.read_bytes(desc), desc.media_type
        assert src.path is not None
        # Each layer read shows as a task, unless its bytes go on to a registry: the push
        # is then the task (reported twice, they would count as moved twice).
        shown = self.progress if self.dst.kind != "registry" else None
        raw = await read_docker_archive(src.path, src.name, self.store, self.link, shown)
        return raw, parse_manifest(raw, None)[0]

    async def run(self) -> CopyResult:
        bases = None
        if self.dst.kind == "registry" and self.src.kind in ("local", "registry", "oci"):
            # Whether the destination takes piece-level pushes, and its bases, are asked
            # beside the source's manifest and the blobs' HEADs: they are on the way of
            # the first piece-level push, not of anything before it.
            bases = asyncio.ensure_future(self._piece_bases())
        try:
            return await self._run()
        finally:
            if bases is not None:
                bases.cancel()
                await asyncio.gather(bases, return_exceptions=True)

    async def _run(self) -> CopyResult:
        recipes = None
        # Recipes serve only pieces the store holds: into a store with none (a cold pull)
        # neither the extension nor any blob's recipe is asked for.
        if self.src.kind == "registry" and await self.store.holds_pieces():
            assert self.src.ref is not None
            # Asked beside the manifest: one round trip less before the first blob.
            recipes = asyncio.ensure_future(
                self.client.has_recipes(self.src.ref.api_host, self.src.ref.name))
        try:
            raw, media_type = await self.read_manifest(None)
            if recipes is not None:
                self.recipes = await recipes
        finally:
            if recipes is not None:  # also retrieves its failure when the manifest's came first
                recipes.cancel()
                await asyncio.gather(recipes, return_exceptions=True)
        media_type, obj = parse_manifest(raw, media_type)
        top = raw
        children: list[tuple[Descriptor, bytes, Manifest]] = []
        entry_blobs: list[Descriptor] = []  # an index's entries that are blobs (a build cache)
        if isinstance(obj, Index):
            if self.options.all_platforms:
                if self.dst.kind == "docker-archive":  # refused before any blob moves, as skopeo does
                    raise LayoutError("a docker archive holds one image: copy one platform, not --all-platforms")
                entries = await read_index_entries(obj, self.read_manifest, self.src)
                children, entry_blobs = entries.manifests, entries.blobs
            else:
                entry = select_platform(obj, self.options.platform)
                raw, media_type = await self.read_manifest(entry)
                media_type, obj = parse_manifest(raw, media_type)
                if not isinstance(obj, Manifest):
                    raise LayoutError(f"{self.src}: the entry picked, {entry.digest}, is an index, and nested "
                                      "indexes are not supported: copy that index by its digest")
        self._check_digest(top, raw)
        if self.dst.kind in ("oci", "docker-archive"):
            assert self.dst.path is not None
            check_destination(self.dst.kind, self.dst.path)
        if isinstance(obj, Manifest) and self.dst.kind == "docker-archive" \
                and obj.config.media_type not in (OCI_CONFIG, DOCKER_CONFIG):
            raise LayoutError(f"{self.src} is an artifact ({obj.config.media_type}), not an image, and a docker "
                              "archive holds images (docker load refuses it): copy it to oci: or a registry")
        manifests: list[Any] = [c[2] for c in children] if isinstance(obj, Index) else [obj]
        blobs = {d.digest: d for m in manifests for d in m.references()}
        blobs.update((d.digest, d) for d in entry_blobs)
        # A local image's blobs stay while they are read, whatever rmi and gc do meanwhile.
        hold = held(self.store, blobs) if self.src.kind == "local" else contextlib.nullcontext()
        async with hold, undone_on_failure(self.dst.path if self.dst.kind == "oci" else None) as layout:
            self.dst_layout = layout
            # One blob failed: the others stop (they keep what they have for a resume).
            await gather_or_cancel([asyncio.create_task(self._move(d)) for d in blobs.values()])
            digest = await self._write_manifests(raw, media_type, obj, children)
        return CopyResult(digest, media_type, dict(self.statuses))

    def _check_digest(self, top: bytes, raw: bytes) -> None:
        """Refuse, before any blob moves, a destination named by a digest that the manifest
        written there (``raw``: ``top``, or the platform's manifest picked from the index
        ``top``) does not have: a registry files a manifest under its own digest, so
        ``repo@X`` would get another manifest than X, and the copy would seem to succeed.
        The local store names images, not contents: ``local:repo@X`` may also hold the
        platform's manifest of the index X, as ``pybuild pull repo@X`` records it."""
        dst = self.dst
        wanted = dst.ref.digest if dst.ref is not None else None
        if wanted is None:
            return
        written = Digest.of(raw, wanted.algorithm)
        if written == wanted:
            return
        reduced = top is not raw
        if reduced and dst.kind == "local" and Digest.of(top, wanted.algorithm) == wanted:
            return
        if reduced and Digest.of(top, wanted.algorithm) == wanted:
            hint = (f"add --all-platforms to copy the whole index {wanted}, or name a tag "
                    f"(or the platform's digest {written})")
        else:
            hint = f"name a tag instead, or the digest of what is copied ({written})"
        what = "the platform's manifest picked from the index" if reduced else "the manifest copied"
        raise CopyError(f"{dst} names digest {wanted}, but {what} is {written}: {hint}")

    async def _move(self, desc: Descriptor) -> None:
        self.statuses[str(desc.digest)] = await self._move_one(desc)

    async def _move_one(self, desc: Descriptor) -> str:
        dst, src = self.dst, self.src
        if dst.kind == "registry":
            assert dst.ref is not None
            key = str(desc.digest)
            async with self.head_sem:
                if await self.client.head_blob(dst.ref.api_host, dst.ref.name, desc.digest, push=True):
                    self.progress.start(key, desc.digest.encoded[:12], desc.size)
                    self.progress.finish(key, "exists")
                    return "exists"
            same_registry = (src.kind == "registry" and src.ref is not None
                             and src.ref.api_host == dst.ref.api_host)
            if same_registry and src.ref is not None:
                async with self.push_sem:
                    if await self.client.start_upload(dst.ref.api_host, dst.ref.name,
                                                      mount=desc.digest, source=src.ref.name) is None:
                        self.progress.start(key, desc.digest.encoded[:12], desc.size)
                        self.progress.finish(key, "mounted")
                        return "mounted"
        if desc.nondistributable and await self.store.stat(desc.digest) is None and src.kind == "registry" \
                and dst.kind != "docker-archive":
            return "skipped"  # where its urls point; an archive holds it (fetched as skopeo does)
        if dst.kind == "registry" and src.kind in ("registry", "oci") \
                and await self.store.stat(desc.digest) is None \
                and (desc.size < PIECE_PUSH_MIN or not await self._piece_bases()):
            assert dst.ref is not None
            async with self.push_sem:
                return await push_blob(self.client, self.images, dst.ref, desc, self.progress,
                                       options=self.options.transfer, source=self._stream(desc),
                                       absent=True)
        if src.kind == "registry" and src.ref is not None and self.recipes \
                and self.options.transfer.recipes and await self.store.stat(desc.digest) is None:
            # Asked now, while the blob may still wait for a slot (see prefetch_recipe).
            self.client.prefetch_recipe(src.ref.api_host, src.ref.name, desc.digest)
        # A blob fetched into the local store on its way to a registry is one task, the
        # push: reported twice (done/exists or done/pulled, then done/pushed) its bytes
        # would count as both reused and transferred. The fetch is its first phase (its
        # bar moves; the totals count the push). A fetch that fails is reported.
        key = str(desc.digest)
        fetch_progress = self.progress.phase(key, "fetch") if dst.kind == "registry" else self.progress
        async with _Slot(self.sem) as slot:
            try:
                status = await self._fetch(desc, fetch_progress, slot.release)
            except BaseException as exc:
                if fetch_progress is not self.progress:
                    self.progress.start(key, desc.digest.encoded[:12], desc.size)
                    self.progress.fail(key, exc)
                raise
            if dst.kind == "oci":
                assert self.dst_layout is not None
                # From the local store, writing the layout's copy is the blob's task.
                exported = await self.dst_layout.export_blob(
                    self.store, desc.digest, self.progress if src.kind == "local" else None, desc.size)
                status = exported if src.kind == "local" else status
            elif dst.kind == "docker-archive" and src.kind == "local":
                status = "exported"  # written with the manifest (_write_manifests), or the copy fails
        if dst.kind == "registry":
            assert dst.ref is not None
            # The upload places are taken for sending bytes only: a piece-level push
            # states its plan and commits outside them (small requests, and the commit
            # is the registry's work: it reads and hashes the blob).
            status = await push_blob(self.client, self.images, dst.ref, desc, self.progress,
                                     mount_from=await self._mount_sources(desc),
                                     options=self.options.transfer,
                                     bases=await self._piece_bases(), absent=True,
                                     uploads=self.push_sem)
        return status

    async def _piece_bases(self) -> list[Digest]:
        """Bases for piece-level pushes (:func:`piece_bases`), found once per copy; none
        when the destination does not take them."""
        async with self._bases_lock:
            if self._bases is None:
                dst = self.dst.ref
                bases: list[Digest] = []
                if dst is not None and self.dst.kind == "registry" and self.options.transfer.recipes:
                    # The tag list is asked beside the extensions (a round trip less);
                    # manifests only of a registry that takes piece-level pushes.
                    tags = asyncio.ensure_future(destination_tags(self.client, dst))
                    try:
                        if await self.client.has_piece_push(dst.api_host, dst.name):
                            bases = await piece_bases(self.client, self.images, dst, await tags)
                    finally:
                        tags.cancel()
                        await asyncio.gather(tags, return_exceptions=True)
                self._bases = bases
            return self._bases

    async def _piece_sources(self) -> PieceSources:
        """Where local images of the source repository hold each piece, found once per
        copy and only when a blob needs it (a resumed pull; a fresh one is assembled
        from its recipe without it)."""
        async with self._sources_lock:
            if self._sources is None:
                assert self.src.ref is not None
                self._sources = await local_piece_sources(self.images, self.src.ref)
            return self._sources

    def _stream(self, desc: Descriptor) -> Callable[[int], AsyncIterator[bytes | memoryview]]:
        """The blob's bytes from an offset, straight from the source (no local copy)."""
        src = self.src
        if src.kind == "oci":
            assert src.path is not None
            path = OciLayout(src.path).blob_path(desc.digest)
            return file_source(path, f"{src.path} lacks blob {desc.digest} ({path} is missing)")
        assert src.ref is not None
        return registry_source(self.client, src.ref, desc)

    async def _fetch(self, desc: Descriptor, progress: Progress,
                     fetched: Callable[[], None] | None = None) -> str:
        src = self.src
        if src.kind == "registry":
            assert src.ref is not None
            return await pull_blob(self.client, self.images, src.ref, desc, progress,
                                   recipes=self.recipes, link=self.link, options=self.options.transfer,
                                   sources=self._piece_sources, fetched=fetched)
        if src.kind == "oci":
            assert src.path is not None
            await OciLayout(src.path).import_blob(self.store, desc, self.link, progress)
            return "imported"
        if await self.store.stat(desc.digest) is None:
            raise ImageNotFound(f"blob {desc.digest} of {src} is missing from the local store" + (
                "; a nondistributable layer is not pulled: copy the image from its registry (its"
                " urls are read)" if desc.nondistributable else ""))
        if self.link:
            await self.store.link(self.link, desc.digest)
        return "exists"

    async def _mount_sources(self, desc: Descriptor) -> tuple[str, ...]:
        """Repositories on the destination registry that local images came from."""
        assert self.dst.ref is not None
        out = []
        for holder in map(parse_holder, await self.store.holders(desc.digest)):
            if holder is not None and holder.kind is HolderKind.IMAGE:
                try:
                    ref = parse_image_ref(holder.name)
                except InvalidReference:
                    continue
                if ref.api_host == self.dst.ref.api_host and ref.name != self.dst.ref.name:
                    out.append(ref.name)
        return tuple(dict.fromkeys(out))

    async def _write_manifests(self, raw: bytes, media_type: str, obj: Manifest | Index,
                               children: list[tuple[Descriptor, bytes, Manifest]]) -> Digest:
        dst = self.dst
        digest = Digest.of(raw)
        if dst.kind == "registry":
            assert dst.ref is not None
            for entry, child_raw, _ in children:
                await self.client.put_manifest(dst.ref.with_digest(entry.digest), child_raw, entry.media_type)
            target = dst.ref if dst.ref.digest is None else dst.ref.with_digest(digest)
            await self.client.put_manifest(target, raw, media_type)
        elif dst.kind == "local":
            for entry, child_raw, _ in children:
                await self.store.put(child_raw, expected=entry.digest, link=self.link)
            await self.images.put(str(dst.ref), raw, media_type)
        elif dst.kind == "oci":
            layout = self.dst_layout
            assert layout is not None
            converted: dict[str, tuple[str, int]] = {}
            for entry, child_raw, _ in children:
                child = as_oci(child_raw)
                child_digest = Digest.of(child)
                converted[str(entry.digest)] = (str(child_digest), len(child))
                await layout.write_bytes(child_digest, child)
            oci_raw = as_oci(raw, converted)
            if oci_raw is not raw:
                was, raw, digest = digest, oci_raw, Digest.of(oci_raw)
                media_type = OCI_INDEX if isinstance(obj, Index) else OCI_MANIFEST
                self.progress.message(f"{dst}: the Docker manifest is written as OCI, as an OCI "
                                      f"layout holds: digest {digest} (was {was})")
            await layout.write_bytes(digest, raw)
            await layout.tag(Descriptor(media_type, digest, len(raw)), dst.name)
        else:
            assert dst.path is not None and isinstance(obj, Manifest)  # an index is refused in _run
            await write_docker_archive(dst.path, dst.name, obj, self.store,  # from local: each blob a task
                                       self.progress if self.src.kind == "local" else None)
        return digest


async def copy_image(src: Endpoint, dst: Endpoint, images: ImageStore, client: RegistryClient,
                     progress: Progress, options: CopyOptions = CopyOptions()) -> CopyResult:
    """Copy the image at ``src`` to ``dst`` (see the module docstring)."""
    if dst.kind in ("oci", "oci-archive", "docker-archive") and source_index(dst.name) is not None:
        raise CopyError(f"{dst}: {dst.name} names a source's image by its place; "
                        "name the image written with a tag instead")
    if "oci-archive" in (src.kind, dst.kind):
        async with unpacked(src, dst, progress.message) as (layout_src, layout_dst):
            return await _Copy(layout_src, layout_dst, images, client, progress, options).run()
    return await _Copy(src, dst, images, client, progress, options).run()


def file_source(path: Path, missing: str) -> Callable[[int], AsyncIterator[bytes | memoryview]]:
    """A blob's bytes from an offset, read from the file ``path`` (LayoutError ``missing``
    when it is not there)."""

    async def read(offset: int) -> AsyncIterator[bytes | memoryview]:
        try:
            f = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise LayoutError(missing) from None
        try:
            await asyncio.to_thread(f.seek, offset)
            while data := await asyncio.to_thread(f.read, _STREAM_READ):
                yield data
        finally:
            f.close()

    return read


def registry_source(client: RegistryClient, ref: ImageRef, desc: Descriptor
                    ) -> Callable[[int], AsyncIterator[bytes | memoryview]]:
    """A blob's bytes from an offset, read from the registry holding ``ref``."""

    async def read(offset: int) -> AsyncIterator[bytes | memoryview]:
        if offset >= desc.size:
            return
        async with client.open_blob(ref.api_host, ref.name, desc.digest, offset) as resp:
            while True:
                buf = bytearray(_STREAM_READ)
                n, failure = await resp.run(resp.fill, memoryview(buf))
                if n:
                    yield memoryview(buf)[:n]
                if failure is not None:
                    raise failure
                if n < len(buf):
                    return

    return read
