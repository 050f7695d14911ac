"""``-t`` and ``--push``: a built image into pybuild's local image store, and from there
to registries (through ``registry.client.image_store`` and ``registry.client.copy``, as ``pybuild push``)."""

from __future__ import annotations

from cas import Store
from registry.client.image_store import ImageStore
from registry.client.refs import InvalidReference, parse_image_ref

from .base import client_options
from .image import BuiltImage, BuiltIndex
from .progress import BuildProgress
from .transfer_view import transfer_totals

__all__ = ["PublishError", "push_images", "tag_images"]


class PublishError(Exception):
    """Tagging or pushing failed (names the reference and why)."""


async def tag_images(image: BuiltImage | BuiltIndex, store: Store, tags: list[str]) -> list[str]:
    """Store the image (or a multi-platform build's index, with every platform's image)
    under every tag (normalised refs are returned)."""
    refs = []
    for t in tags:
        try:
            refs.append(str(parse_image_ref(t)))
        except InvalidReference as exc:
            raise PublishError(f"-t {t}: {exc}") from exc
    # A rebuild that changed nothing made the same image: its blobs are stored and its
    # tags already name it, so nothing is written (and nothing synced to disk).
    members = image.images if isinstance(image, BuiltIndex) else (image,)
    for member in members:
        if await store.stat(member.manifest.config.digest) is None:
            await store.put(member.config_bytes, expected=member.manifest.config.digest)
        if isinstance(image, BuiltIndex) and await store.stat(member.digest) is None:
            await store.put(member.manifest_bytes, expected=member.digest)
    raw, media_type = ((image.index_bytes, image.descriptor.media_type)
                       if isinstance(image, BuiltIndex)
                       else (image.manifest_bytes, image.manifest.media_type))
    images = await ImageStore.open(store=store)
    try:
        for ref in refs:
            known = await images.resolve(ref)
            if known is not None and known.digest == image.digest \
                    and await store.stat(image.digest) is not None:
                continue
            await images.put(ref, raw, media_type)
    finally:
        await images.close()
    return refs


async def push_images(store: Store, refs: list[str], progress_mode: str = "quiet", *,
                      progress: BuildProgress | None = None, step: int = 0) -> None:
    """Push each locally stored ref to its registry; with ``progress``, the bytes of
    each blob are shown under build step ``step``."""
    # The HTTP client (aiohttp) only when pushing: tagging alone must start fast.
    from registry.client.copy import CopyOptions, Endpoint, copy_image
    from registry.client.progress import Progress as RegistryProgress
    from registry.client.pull import BlobError
    from registry.client.remote import RegistryClient, TransportError
    from registry.errors import RegistryError

    images = await ImageStore.open(store=store)
    current: list[RegistryProgress] = []  # the view of the ref being pushed

    def notice(text: str) -> None:  # "waiting for HOST": to that view
        for view in current:
            view.message(text)

    try:
        async with RegistryClient(client_options(notice)) as client:
            for ref in refs:
                r = parse_image_ref(ref)
                view = RegistryProgress(progress_mode)
                if progress is not None:
                    from .transfer_view import TransferView

                    view = TransferView(progress, step)
                current[:] = [view]
                try:
                    # every platform of an index (a multi-platform build)
                    await copy_image(Endpoint("local", r), Endpoint("registry", r), images,
                                     client, view, CopyOptions(all_platforms=True))
                except (RegistryError, TransportError, BlobError, OSError) as exc:
                    raise PublishError(f"pushing {ref}: {exc}") from exc
                if progress is not None:
                    progress.log(step, transfer_totals(ref, view.summary()))
    finally:
        await images.close()
