"""Lazy cache layers: the layer blobs of imported cache entries that stay where the cache
is (a registry repository, or an OCI layout) until something needs their bytes.

A step whose key hits an imported entry whose blob is not in the local store is CACHED
once the source is known to hold the blob (a ``HEAD`` on the registry, a file in the
layout; :meth:`RemoteLayers.usable`); nothing is fetched. The blob is fetched
(:meth:`RemoteLayers.fetch`, linked ``cache:<key>`` in the store):

- when a later step must run on it (the extracted layers ask: ``ExtractedLayers.fetch``),
- when an output holds the image's files or blobs (``-o``, ``--load``, ``-t`` without
  ``--push``: :meth:`RemoteLayers.materialise`),
- when a ``type=local`` cache is exported.

``--push`` and a ``type=registry`` cache export do not fetch it: the destination is given
the blob by a cross-repository mount when the source is another repository of the same
registry, by nothing when it already has it (the same repository), and otherwise by a
copy streamed from the source through this process (:meth:`RemoteLayers.put_blob`), never
stored here. So a fully cached build pushed to the registry its cache lives in moves no
layer bytes at all.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cas import Digest, Store
from cas.holders import cache_holder
from registry.client.errors import ClientError
from registry.client.layouts import LayoutError, OciLayout
from registry.errors import RegistryError
from registry.oci import OCI_MANIFEST, Descriptor, ImageConfig, Index, Manifest, parse_manifest

from .entries import CachedLayer

if TYPE_CHECKING:
    from cas.ingest import Ingest
    from registry.client.image_store import ImageStore
    from registry.client.progress import Progress
    from registry.client.refs import ImageRef
    from registry.client.remote import RegistryClient

    from ..base import BaseImage
    from ..image import BuiltImage, BuiltIndex
    from ..sandbox.spec import CacheMount
    from .manifest import MountEntry
    from .spec import CacheSpec
    from .tracking import TrackingCache

__all__ = ["LazyLayerError", "MountSources", "RemoteLayers", "lazy_base"]


class _Info(Protocol):
    def info(self, text: str) -> None: ...


class _Abandoned(Exception):
    """A streamed fetch that stopped before the blob's end (:meth:`RemoteLayers.stream`)."""


class LazyLayerError(RuntimeError):
    """A lazy layer's blob could not be fetched from its cache source when it was needed."""


class RemoteLayers:
    """The imported hits whose blobs are still at their source; one per build."""

    def __init__(self, store: Store, cache: TrackingCache) -> None:
        self.store = store
        self.cache = cache
        # digest -> (where it is, its descriptor, the holders that will link it: the
        # cache keys that hit it, or a base image)
        self.sources: dict[Digest, tuple[CacheSpec, Descriptor, set[str]]] = {}
        # registry bases may stay in their registry too (set when --cache-from is given)
        self.lazy_bases = False
        self.fetched: set[Digest] = set()
        # layer -> its TOC (builder.lazyfs), from the imported caches; lazy like a layer
        self.tocs: dict[Digest, Descriptor] = {}
        self._checked: dict[tuple[str, Digest], bool] = {}
        self._fetches: dict[Digest, asyncio.Future[None]] = {}
        self._commits: set[asyncio.Future[None]] = set()  # streamed blobs being stored
        self._client: RegistryClient | None = None
        self._images: ImageStore | None = None
        self._placed: dict[Digest, list[ImageRef]] = {}  # where this build pushed a blob
        self._open_lock = asyncio.Lock()

    async def _registry(self) -> tuple[RegistryClient, ImageStore]:
        async with self._open_lock:
            if self._client is None or self._images is None:
                from registry.client.image_store import ImageStore
                from registry.client.remote import RegistryClient

                from ..base import client_options

                self._images = await ImageStore.open(store=self.store)
                client = RegistryClient(client_options())
                await client.__aenter__()
                self._client = client
            return self._client, self._images

    async def close(self) -> None:
        await asyncio.gather(*self._commits, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        if self._images is not None:
            await self._images.close()

    def source_of(self, key: str) -> str:
        """Which cache a hit on ``key`` came from: ``local`` or the ``--cache-from``."""
        spec = self.cache.origin.get(key)
        return "local" if spec is None else str(spec)

    async def usable(self, key: str, layer: CachedLayer) -> str | None:
        """An imported hit whose blob is not stored here: None when its source holds the
        blob (it stays there, lazy), else why it cannot be used."""
        spec = self.cache.origin.get(key)
        if spec is None:
            return "its cached layer is no longer stored"
        desc = Descriptor(layer.media_type, Digest.parse(layer.digest), layer.size)
        check = (str(spec), desc.digest)
        if check not in self._checked:
            try:
                self._checked[check] = await self._has(spec, desc.digest)
            except (OSError, ValueError, ClientError, RegistryError) as exc:
                self._checked[check] = False
                return f"{spec} cannot be asked for its layer {desc.digest}: {exc}"
        if not self._checked[check]:
            return f"{spec} no longer holds its layer {desc.digest}"
        entry = self.sources.setdefault(desc.digest, (spec, desc, set()))
        entry[2].add(cache_holder(key))
        return None

    async def _has(self, spec: CacheSpec, digest: Digest) -> bool:
        if spec.type == "local":
            path = OciLayout(Path(spec.where)).blob_path(digest)
            return await asyncio.to_thread(path.is_file)
        from registry.client.refs import parse_image_ref

        ref = parse_image_ref(spec.where)
        client, _ = await self._registry()
        return await client.head_blob(ref.api_host, ref.name, digest) is not None

    def pending(self, digests: Collection[Digest]) -> list[Digest]:
        """Those of ``digests`` that are lazy (at their source, not fetched)."""
        return [d for d in dict.fromkeys(digests) if d in self.sources and d not in self.fetched]

    async def fetch(self, digest: Digest) -> None:
        """Bring a lazy blob into the store (once, whoever asks); a blob that is not lazy
        is left alone. LazyLayerError: the source failed."""
        while digest in self.sources and digest not in self.fetched:
            task = self._fetches.get(digest)
            if task is None:
                task = self._fetches[digest] = asyncio.ensure_future(self._fetch(digest))
            try:
                await asyncio.shield(task)
            except _Abandoned:
                continue  # a stream (below) stopped before its end: fetch it then
            return

    def stream(self, digest: Digest) -> AsyncIterator[bytes] | None:
        """A lazy blob of a registry, not being fetched: its bytes as they arrive, each
        also written into the store, where it is verified and committed (linked as
        :meth:`fetch` links it) once the iterator is read to its end; so the layer is
        extracted while it downloads. A :meth:`fetch` meanwhile waits for it. None for
        any other blob (fetch it, then read it from the store)."""
        found = self.sources.get(digest)
        if found is None or found[0].type != "registry" or digest in self.fetched \
                or digest in self._fetches:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetches[digest] = done
        return self._stream(digest, done)

    async def _stream(self, digest: Digest, done: asyncio.Future[None]) -> AsyncIterator[bytes]:
        from cas.digest import new_hasher
        from cas.errors import CasError
        from registry.client.copy import registry_source
        from registry.client.refs import parse_image_ref

        spec, desc, holders = self.sources[digest]
        ingest = await self.store.begin_ingest(algorithm=desc.digest.algorithm)
        committing = False
        try:
            hasher, size = new_hasher(desc.digest.algorithm), 0
            client, _ = await self._registry()
            async for chunk in registry_source(client, parse_image_ref(spec.where), desc)(0):
                data = bytes(chunk)
                await asyncio.gather(ingest.write(data), asyncio.to_thread(hasher.update, data))
                size += len(data)
                yield data
            got = Digest(desc.digest.algorithm, hasher.hexdigest())
            if (size, got) != (desc.size, desc.digest):
                raise ValueError(f"the registry sent {size} bytes of digest {got}")
            # Verified: the extraction may be used now; the store's commit (its fsync)
            # goes on meanwhile, and fetch() waits for it.
            committing = True
            self._commits.add(asyncio.ensure_future(self._commit(ingest, desc, holders, done)))
        except (OSError, ValueError, ClientError, RegistryError, CasError) as exc:
            failed = LazyLayerError(f"the cached layer {digest} from {spec} cannot be fetched "
                                    f"({exc}); build again without that --cache-from")
            done.set_exception(failed)
            done.exception()  # retrieved: the waiters (if any) raise it
            raise failed from exc
        finally:
            if not committing:
                if not done.done():  # stopped early: nothing kept, a fetch starts over
                    done.set_exception(_Abandoned())
                    done.exception()
                self._fetches.pop(digest, None)
                await ingest.abort()

    async def _commit(self, ingest: Ingest, desc: Descriptor, holders: set[str],
                      done: asyncio.Future[None]) -> None:
        try:
            links: list[str | None] = [*sorted(holders)] or [None]
            first, *more = links
            await ingest.commit(desc.digest, size=desc.size, link=first)
            for holder in more:
                if holder is not None:
                    await self.store.link(holder, desc.digest)
            self.fetched.add(desc.digest)
            done.set_result(None)
        except BaseException:
            await ingest.abort()
            self._fetches.pop(desc.digest, None)
            done.set_exception(_Abandoned())  # a fetch starts over
            done.exception()
            raise

    async def _fetch(self, digest: Digest) -> None:
        spec, desc, holders = self.sources[digest]
        links: list[str | None] = [*sorted(holders)] or [None]
        first, *more = links
        try:
            if spec.type == "local":
                await OciLayout(Path(spec.where)).import_blob(self.store, desc, link=first)
            else:
                from registry.client.progress import Progress
                from registry.client.pull import BlobError, pull_blob
                from registry.client.refs import parse_image_ref

                client, images = await self._registry()
                try:
                    await pull_blob(client, images, parse_image_ref(spec.where), desc,
                                    Progress("quiet"), link=first)
                except BlobError as exc:
                    raise LayoutError(str(exc)) from exc
        except (OSError, ValueError, ClientError, RegistryError) as exc:
            raise LazyLayerError(f"the cached layer {digest} from {spec} cannot be fetched "
                                 f"({exc}); build again without that --cache-from") from exc
        for holder in more:
            if holder is not None:
                await self.store.link(holder, digest)
        self.fetched.add(digest)

    async def read_range(self, digest: Digest, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (inclusive) of the lazy blob ``digest``, from its source
        (a ``Range`` GET, or the layout's file); not checked here (the caller has the
        digests of the parts: builder.lazyfs)."""
        spec = self.sources[digest][0]
        if spec.type == "local":
            path = OciLayout(Path(spec.where)).blob_path(digest)
            return await asyncio.to_thread(_pread, path, start, end + 1 - start)
        from registry.client.refs import parse_image_ref

        ref = parse_image_ref(spec.where)
        client, _ = await self._registry()
        async with client.open_blob(ref.api_host, ref.name, digest, start, end) as resp:
            return await resp.read()

    async def base(self, ref: str, platform: str, *, pull: bool = False
                   ) -> tuple[Digest, Manifest, ImageConfig] | None:
        """A registry base image that the local image store lacks (or any, with
        ``pull``): its manifest and config read from the registry, its layers left there
        (lazy, fetched as a cache hit's are). None: use the local image store's."""
        from registry.client.image_store import select_platform
        from registry.client.progress import Progress
        from registry.client.pull import pull_blob
        from registry.client.refs import parse_image_ref

        image_ref = parse_image_ref(ref)
        client, images = await self._registry()
        if not pull and await images.resolve(str(image_ref)) is not None:
            return None
        raw, media_type, _ = await client.get_manifest(image_ref)
        _, obj = parse_manifest(raw, media_type)
        if isinstance(obj, Index):
            entry = select_platform(obj, platform)
            raw, media_type, _ = await client.get_manifest(image_ref.with_digest(entry.digest))
            _, obj = parse_manifest(raw, media_type)
            if not isinstance(obj, Manifest):
                raise ValueError(f"{image_ref}: nested indexes are not supported")
        # as builder.base names a base (its key's root): the manifest as pybuild writes it
        digest = Digest.of(obj.to_bytes())
        holder = cache_holder(f"base:{digest}")
        await pull_blob(client, images, image_ref, obj.config, Progress("quiet"), link=holder)
        config = ImageConfig.parse(await self.store.read_bytes(obj.config.digest))
        spec = _base_spec(str(image_ref))
        for desc in obj.layers:
            if await self.store.stat(desc.digest) is not None:
                await self.store.link(holder, desc.digest)
            else:
                self.sources.setdefault(desc.digest, (spec, desc, set()))[2].add(holder)
        return digest, obj, config

    async def blob_file(self, spec: CacheSpec, desc: Descriptor, dest: Path) -> Path:
        """A path holding the blob ``desc`` of the cache ``spec`` (a layout's own file,
        or ``dest`` filled from the registry through the store)."""
        if spec.type == "local":
            return OciLayout(Path(spec.where)).blob_path(desc.digest)
        from registry.client.progress import Progress
        from registry.client.pull import pull_blob
        from registry.client.refs import parse_image_ref

        client, images = await self._registry()
        await pull_blob(client, images, parse_image_ref(spec.where), desc, Progress("quiet"))
        f = await asyncio.to_thread(open, dest, "wb")
        try:
            async for chunk in self.store.read(desc.digest):
                await asyncio.to_thread(f.write, chunk)
        finally:
            await asyncio.to_thread(f.close)
        return dest

    async def materialise(self, digests: Collection[Digest]) -> None:
        """Fetch every lazy one of ``digests`` (an output needs their bytes here)."""
        await asyncio.gather(*(self.fetch(d) for d in self.pending(digests)))

    async def put_blob(self, client: RegistryClient, images: ImageStore, dst: ImageRef,
                       desc: Descriptor, progress: Progress, mount_from: tuple[str, ...] = ()
                       ) -> str:
        """Make ``dst``'s repository hold the blob: from the local store (or mounted from
        ``mount_from``, repositories of the same registry that may have it), or for a lazy
        one by a mount from its cache repository (same registry) or streamed from its
        source; returns how (``exists``, ``mounted``, ``pushed``). A blob this build has
        already put into another repository of ``dst``'s registry is mounted from there."""
        from registry.client.push import push_blob

        placed = tuple(r.name for r in self._placed.get(desc.digest, ())
                       if r.api_host == dst.api_host and r.name != dst.name)
        lazy = self.sources.get(desc.digest)
        if lazy is None or desc.digest in self.fetched \
                or await self.store.stat(desc.digest) is not None:
            how = await push_blob(client, images, dst, desc, progress,
                                  mount_from=(placed + mount_from)[:1])
        elif lazy[0].type == "local":
            from registry.client.copy import file_source

            path = OciLayout(Path(lazy[0].where)).blob_path(desc.digest)
            how = await push_blob(client, images, dst, desc, progress, mount_from=placed[:1],
                                  source=file_source(path, f"the local cache {lazy[0].where} lacks "
                                                           f"layer {desc.digest} ({path} is missing)"))
        else:
            from registry.client.copy import registry_source
            from registry.client.refs import parse_image_ref

            src = parse_image_ref(lazy[0].where)
            mount = placed + ((src.name,) if src.api_host == dst.api_host else ())
            src_client, _ = await self._registry()
            how = await push_blob(client, images, dst, desc, progress, mount_from=mount[:1],
                                  source=registry_source(src_client, src, desc))
        self._placed.setdefault(desc.digest, []).append(dst)
        return how

    async def push_image(self, image: BuiltImage | BuiltIndex, refs: list[str],
                         progress: Progress) -> None:
        """Push a built image (or index) whose lazy layers stay at their sources to each
        of ``refs`` (blobs first, then the manifests), without the local image store."""
        from registry.client.refs import parse_image_ref

        from ..image import BuiltIndex

        client, images = await self._registry()
        members = image.images if isinstance(image, BuiltIndex) else (image,)
        for member in members:
            if await self.store.stat(member.manifest.config.digest) is None:
                await self.store.put(member.config_bytes, expected=member.manifest.config.digest)
        pushed: list[ImageRef] = []  # a later name mounts the blobs from an earlier one
        for ref in refs:
            dst = parse_image_ref(ref)
            blobs = {d.digest: d for m in members
                     for d in (m.manifest.config, *m.manifest.layers)}
            mounts = tuple(p.name for p in pushed if p.api_host == dst.api_host)[:1]
            await asyncio.gather(*(self.put_blob(client, images, dst, d, progress, mounts)
                                   for d in blobs.values()))
            pushed.append(dst)
            if isinstance(image, BuiltIndex):
                for m in members:
                    await client.put_manifest(dst.with_digest(m.digest), m.manifest_bytes,
                                              m.manifest.media_type or OCI_MANIFEST)
                await client.put_manifest(dst, image.index_bytes, image.descriptor.media_type)
            else:
                await client.put_manifest(dst, image.manifest_bytes,
                                          image.manifest.media_type or OCI_MANIFEST)


class MountSources:
    """The cache mounts imported caches carry (``--cache-to ...,cache-mounts=true``),
    restored when a RUN step that mounts one must run (:mod:`.mounts`)."""

    def __init__(self, layers: RemoteLayers) -> None:
        self.layers = layers
        self.imported: dict[str, tuple[CacheSpec, MountEntry]] = {}  # id -> first source
        self.used: set[str] = set()  # ids RUN steps of this build mounted

    def carried(self, exported: Collection[str]) -> list[MountEntry]:
        """The imported caches of ids this build used but has no directory for (its RUN
        steps were cached): exported again as they came, their blobs left at the source
        (lazy), so that a fully cached build does not drop them from the next cache."""
        out = []
        for cache_id in sorted(self.used - set(exported)):
            found = self.imported.get(cache_id)
            if found is not None:
                spec, entry = found
                desc = Descriptor(entry.layer.media_type, Digest.parse(entry.layer.digest),
                                  entry.layer.size)
                if desc.digest not in self.layers.sources:
                    self.layers.sources[desc.digest] = (spec, desc, set())
                out.append(entry)
        return out

    async def restore(self, mounts: Collection[CacheMount], cache_dir: Path,
                      work: Path) -> list[str]:
        """Restore the imported caches of ``mounts`` that this runner lacks; returns
        the ids restored. LazyLayerError: a source failed."""
        from ..sandbox.caches import cache_root
        from .mounts import restore_mount

        done = []
        for m in mounts:
            found = self.imported.get(m.cache_id)
            if found is None or await asyncio.to_thread(
                    (cache_root(cache_dir, m.cache_id) / "0").exists):
                continue
            spec, entry = found
            desc = Descriptor(entry.layer.media_type, Digest.parse(entry.layer.digest),
                              entry.layer.size)
            tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, "", "mount-", work))
            try:
                blob = await self.layers.blob_file(spec, desc, tmp / "blob")
                if await asyncio.to_thread(restore_mount, blob, cache_dir, m):
                    done.append(m.cache_id)
            except (OSError, ValueError, ClientError, RegistryError) as exc:
                raise LazyLayerError(f"the cache mount {m.cache_id!r} from {spec} cannot "
                                     f"be restored: {exc}") from exc
            finally:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        return done


def _pread(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), size, offset)


def _base_spec(ref: str) -> CacheSpec:
    from .spec import CacheSpec

    return CacheSpec("registry", ref)


async def lazy_base(remote: RemoteLayers, ref: str, platform: str, *, pull: bool,
                    progress: _Info) -> BaseImage | None:
    """``FROM`` a registry image in a build with ``--cache-from``: its manifest and config
    only, its layers fetched when needed (:meth:`RemoteLayers.base`); None when the local
    image store has it (the usual path then)."""
    from registry.client.errors import ClientError
    from registry.client.refs import InvalidReference

    from ..base import BaseImage, BaseImageError
    from ..image import LayerRef

    try:
        got = await remote.base(ref, platform, pull=pull)
    except InvalidReference as exc:
        raise BaseImageError(str(exc)) from exc
    except (ClientError, RegistryError, OSError, ValueError) as exc:
        raise BaseImageError(f"reading {ref}: {exc}") from exc
    if got is None:
        return None
    digest, manifest, config = got
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise BaseImageError(f"{ref}: the config lists {len(config.rootfs.diff_ids)} diff_ids "
                             f"for {len(manifest.layers)} layers")
    progress.info(f"using {ref} ({digest}) from its registry: its layers are fetched only "
                  "if a step that runs or an output needs them")
    return BaseImage(ref, digest, config,
                     tuple(LayerRef(d, diff) for d, diff in zip(manifest.layers,
                                                                config.rootfs.diff_ids)))
