"""``FROM``: where a stage's base image comes from.

- ``scratch``: nothing;
- ``oci-layout://DIR[:tag]`` (also ``@sha256:...``): an OCI image layout on disk, read
  directly (image-layout.md); ``DIR`` ends at its first colon, as buildx reads it (the
  tag may be a full reference: ``DIR:localhost/app:1``); the tag is matched against the
  ``org.opencontainers.image.ref.name`` annotation; without one the layout must hold
  exactly one image. An index (top-level or nested) gives the wanted platform's manifest;
- a registry reference: taken from pybuild's local image store (``registry.client.image_store``),
  pulled into it first (``registry.client.copy``) when it is not there (or holds another
  platform), as ``docker build`` uses an image it already has. With ``pull`` (``pybuild
  build --pull``, as ``docker build --pull``) the registry is always asked for the
  reference's current manifest and whatever changed is pulled; without it, the progress
  says which local image was used and when it was pulled, so that a stale base is seen.

``platform`` (``os/arch[/variant]``, default the host's) picks the manifest of an index;
an index without it is an error that lists the platforms it has. A plain manifest is
used whatever its config says (as BuildKit, which only warns).

Blobs read from a layout are verified and stored in the CAS (holder ``cache:base:<manifest
digest>``), so later steps and outputs read every layer from one place.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cas import Digest, Store
from cas.holders import cache_holder
from cas.lease import held
from registry.client.image_store import ImageNotFound, ImageStore
from registry.client.layouts import parse_layout_index
from registry.client.refs import InvalidReference, parse_image_ref
from registry.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from registry.client.remote import ClientOptions

    from .progress import BuildProgress

from .fastpath import LAYOUTS_READ
from .image import LayerRef, default_arch

__all__ = ["BaseImage", "BaseImageError", "client_options", "load_oci_layout", "pull_base",
           "resolve_base"]

REF_NAME = "org.opencontainers.image.ref.name"


class BaseImageError(ValueError):
    """A base image that cannot be found or read (says what to check)."""


@dataclass(frozen=True, slots=True)
class BaseImage:
    name: str
    manifest_digest: Digest
    config: ImageConfig
    layers: tuple[LayerRef, ...]


def _split_layout(ref: str) -> tuple[Path, str | None, str | None]:
    rest = ref[len("oci-layout://"):]
    digest = None
    if "@" in rest:
        rest, digest = rest.rsplit("@", 1)
    tag = None
    if not Path(rest).is_dir():
        # As buildx reads it, DIR ends at its first colon: the tag may be a full reference,
        # as podman and buildah name an image in a layout (localhost/app:1).
        for head, sep, tail in (rest.partition(":"), rest.rpartition(":")):
            if sep and head and Path(head).is_dir():
                return Path(head), tail, digest
    head, sep, tail = rest.rpartition(":")
    if sep and "/" not in tail and head:
        rest, tag = head, tail
    return Path(rest), tag, digest


def _blob(layout: Path, digest: Digest) -> Path:
    return layout / "blobs" / digest.algorithm / digest.encoded


def _by_platform(index: Index, platform: str, where: str) -> list[Descriptor]:
    os_, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    found = [d for d in index.manifests if d.platform is not None
             and d.platform.os == os_ and d.platform.architecture == arch
             and (not variant or (d.platform.variant or "") == variant)]
    if not found:
        offered = sorted({str(d.platform) for d in index.manifests if d.platform})
        raise BaseImageError(f"{where}: no image for platform {platform} (the index has: "
                             f"{', '.join(offered) or 'no platforms'}); pick one with "
                             "FROM --platform=... or pybuild build --platform")
    return found


def _pick(layout: Path, index: Index, tag: str | None, digest: str | None,
          where: str, platform: str) -> Manifest:
    cands = list(index.manifests)
    if digest is not None:
        cands = [d for d in cands if str(d.digest) == digest] or _unlisted(layout, digest)
    elif tag is not None:
        cands = [d for d in cands if (d.annotations or {}).get(REF_NAME) == tag]
    if not cands:
        names = [(d.annotations or {}).get(REF_NAME) or f"{d.digest} (untagged)"
                 for d in index.manifests]
        if not names:
            raise BaseImageError(f"{where}: the layout holds no image (its index.json lists none)")
        raise BaseImageError(f"{where}: no image {'tagged ' + tag if tag else digest or ''} "
                             f"in the layout's index.json (it has: {', '.join(names)})")
    if len(cands) > 1 and tag is None and digest is None:
        if all(d.platform is not None for d in cands):
            cands = _by_platform(Index(tuple(cands)), platform, where)
        if len(cands) != 1:
            raise BaseImageError(f"{where}: the layout holds {len(cands)} images; name one "
                                 "as oci-layout://DIR:TAG")
    desc = cands[0]
    raw = _blob(layout, desc.digest).read_bytes()
    if Digest.of(raw, desc.digest.algorithm) != desc.digest:
        raise BaseImageError(f"{where}: blob {desc.digest} does not match its digest")
    if desc.media_type in INDEX_TYPES:
        nested = Index.parse(raw)
        return _pick(layout, Index(tuple(_by_platform(nested, platform, where))), None, None,
                     where, platform)
    return Manifest.parse(raw)


def _unlisted(layout: Path, digest: str) -> list[Descriptor]:
    """The manifest or index ``digest`` that the layout holds without index.json listing
    it (one platform's manifest of a listed index), as BuildKit reads ``DIR@DIGEST`` from
    the layout's blobs; none when the layout lacks it."""
    try:
        found = Digest.parse(digest)
        path = _blob(layout, found)
        if path.stat().st_size > 4 << 20:  # a layer, not a manifest
            return []
        raw = path.read_bytes()
        doc = json.loads(raw)
        media_type = doc.get("mediaType") or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST) \
            if doc.get("schemaVersion") == 2 else None  # not an image config (it has "config" too)
    except (ValueError, OSError, AttributeError):
        return []
    return [Descriptor(media_type, found, len(raw))] if media_type in MANIFEST_TYPES | INDEX_TYPES else []


async def load_oci_layout(ref: str, store: Store, platform: str | None = None) -> BaseImage:
    """Read the image ``oci-layout://DIR[:tag]`` (``platform``'s, from an index) into the
    CAS."""
    layout, tag, digest = _split_layout(ref)
    LAYOUTS_READ.append(os.path.abspath(layout))  # noqa: ASYNC240 - a getcwd at most
    try:
        index = parse_layout_index((layout / "index.json").read_bytes())
    except OSError as exc:
        raise BaseImageError(f"{ref}: cannot read {layout}/index.json ({exc.strerror}); "
                             "is it an OCI image layout?") from exc
    except ValueError as exc:
        raise BaseImageError(f"{ref}: {layout}/index.json is not a valid image index: {exc}") from exc
    try:
        manifest = _pick(layout, index, tag, digest, ref, platform or _host())
    except FileNotFoundError as exc:
        raise BaseImageError(f"{ref}: blob {exc.filename} is missing from the layout") from exc
    except BaseImageError:
        raise
    except ValueError as exc:  # a manifest or index that is no such thing
        raise BaseImageError(f"{ref}: {exc}") from exc
    raw_manifest = manifest.to_bytes()
    holder = cache_holder(f"base:{Digest.of(raw_manifest)}")
    try:
        config_raw = _blob(layout, manifest.config.digest).read_bytes()
        if Digest.of(config_raw, manifest.config.digest.algorithm) != manifest.config.digest:
            raise BaseImageError(f"{ref}: config blob does not match its digest")
        config = ImageConfig.parse(config_raw)
        for d in manifest.layers:
            if await store.stat(d.digest) is None:
                await store.put_file(_blob(layout, d.digest), expected=d.digest, link=holder)
            elif not await store.is_linked(holder, d.digest):
                # Linked already (by an earlier build of this base): not again, which would
                # only move the link's time (nothing reads it for this holder, and nothing
                # unlinks it) and write meta.db, a change to every fast-path record.
                await store.link(holder, d.digest)
    except FileNotFoundError as exc:
        raise BaseImageError(f"{ref}: blob {exc.filename} is missing from the layout") from exc
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise BaseImageError(f"{ref}: the config lists {len(config.rootfs.diff_ids)} diff_ids "
                             f"for {len(manifest.layers)} layers")
    layers = tuple(LayerRef(d, diff) for d, diff in zip(manifest.layers, config.rootfs.diff_ids))
    return BaseImage(ref, Digest.of(raw_manifest), config, layers)


def client_options(notice: Callable[[str], None] | None = None) -> ClientOptions:
    """Registry client settings: ``PYBUILD_INSECURE_REGISTRIES`` (comma-separated hosts)
    as ``pybuild pull`` reads it; loopback registries are always allowed over HTTP.
    ``notice``: where "waiting for HOST" lines go when a registry does not answer."""
    from registry.client.remote import ClientOptions

    insecure = {h for h in os.environ.get("PYBUILD_INSECURE_REGISTRIES", "").split(",") if h}
    return ClientOptions(insecure=frozenset(insecure), notice=notice)


def _host() -> str:
    return f"linux/{default_arch()}"


async def pull_base(ref: str, store: Store, platform: str | None = None, *,
                    pull: bool = False, progress: BuildProgress | None = None,
                    holds: contextlib.AsyncExitStack | None = None) -> BaseImage:
    """A registry image for ``platform`` (default the host's), from pybuild's local image
    store; pulled into it when absent, when the local copy is of another platform, or
    (``pull``) whenever the registry's manifest differs from the local one. ``progress``
    shows the pull (bytes per layer), or which local image was used and its age.
    ``holds``: the image's blobs are held (:func:`cas.lease.held`) until it closes, so
    that an ``rmi`` and a ``storage gc`` in another process do not take them from the
    build; one they took before the hold is pulled again."""
    try:
        image_ref = parse_image_ref(ref)
    except InvalidReference as exc:
        raise BaseImageError(str(exc)) from exc
    platform = platform or _host()
    images = await ImageStore.open(store=store)

    async def fetch() -> None:
        # The HTTP client (aiohttp) is imported only when a pull is needed: a cached
        # rebuild must not pay its start-up cost.
        from registry.client.copy import CopyOptions, Endpoint, copy_image
        from registry.client.progress import Progress as RegistryProgress
        from registry.client.pull import BlobError
        from registry.client.remote import RegistryClient, TransportError
        from registry.errors import RegistryError

        step = None
        view: RegistryProgress = RegistryProgress("quiet")
        if progress is not None:
            from .transfer_view import TransferView

            step = progress.start(f"pulling {image_ref}", replayable=False)
            view = TransferView(progress, step)
        failed = True
        try:
            notice = view.message if step is not None else None
            async with RegistryClient(client_options(notice)) as client:
                await copy_image(Endpoint("registry", image_ref),
                                 Endpoint("local", image_ref), images, client,
                                 view, CopyOptions(platform=platform))
            failed = False
        except ImageNotFound as exc:
            raise BaseImageError(f"{image_ref}: {exc}") from exc
        except (RegistryError, TransportError, BlobError, OSError) as exc:
            raise BaseImageError(f"pulling {image_ref}: {exc}") from exc
        finally:
            if step is not None and progress is not None:
                if failed:
                    progress.error(step, f"pulling {image_ref} failed")
                else:
                    from .transfer_view import transfer_totals

                    progress.log(step, transfer_totals(str(image_ref), view.summary()))
                    progress.done(step)

    async def local() -> tuple[Manifest, ImageConfig]:
        try:
            return await images.get(str(image_ref), platform)
        except ImageNotFound as exc:
            raise BaseImageError(f"{image_ref}: {exc}") from exc

    try:
        pulled = pull or await images.resolve(str(image_ref)) is None
        if pulled:
            # --pull: the registry's current manifest is read every time; blobs the
            # store already has are not fetched again
            await fetch()
        manifest, config = await local()
        if [config.os, config.architecture] != platform.split("/")[:2]:
            # the local copy is another platform's (pulls keep one): fetch this one
            pulled = True
            await fetch()
            manifest, config = await local()
        if holds is not None and not await _hold(store, manifest, holds):
            pulled = True  # removed meanwhile (rmi, storage gc): fetched again, and held
            await fetch()
            manifest, config = await local()
            await _hold(store, manifest, holds)
        used = await images.resolve(str(image_ref))
    finally:
        await images.close()
    if not pulled and progress is not None and used is not None:
        progress.base_image(str(image_ref), str(used.digest), used.created)
    if len(config.rootfs.diff_ids) != len(manifest.layers):
        raise BaseImageError(f"{ref}: the config lists {len(config.rootfs.diff_ids)} diff_ids "
                             f"for {len(manifest.layers)} layers")
    layers = tuple(LayerRef(d, diff) for d, diff in zip(manifest.layers, config.rootfs.diff_ids))
    return BaseImage(str(image_ref), Digest.of(manifest.to_bytes()), config, layers)


async def _hold(store: Store, manifest: Manifest, holds: contextlib.AsyncExitStack) -> bool:
    """Hold the config and layers of ``manifest`` until ``holds`` closes; False when the
    store no longer has one of them (a foreign layer, never pulled, aside)."""
    blobs = [manifest.config.digest,
             *(d.digest for d in manifest.layers if not d.nondistributable)]
    await holds.enter_async_context(held(store, blobs))
    return all([await store.stat(d) is not None for d in blobs])


async def resolve_base(ref: str, store: Store, platform: str | None = None, *,
                       pull: bool = False, progress: BuildProgress | None = None,
                       holds: contextlib.AsyncExitStack | None = None) -> BaseImage:
    """A base image by reference (not ``scratch`` and not a stage name), for ``platform``
    (``os/arch[/variant]``; default the host's); ``pull``, ``progress`` and ``holds``: see
    :func:`pull_base`."""
    if ref.startswith("oci-layout://"):
        return await load_oci_layout(ref, store, platform)
    return await pull_base(ref, store, platform, pull=pull, progress=progress, holds=holds)
