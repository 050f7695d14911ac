"""The entries of an index copied whole (``copy --all-platforms``): manifests and blobs.

An index usually lists manifests (one per platform), but the OCI image spec lets it list
any descriptor, and BuildKit's registry cache (``--cache-to type=registry`` without
``image-manifest=true``) is an index whose entries are its layers and a cache config
(``application/vnd.buildkit.cacheconfig.v0``): blobs of the repository, which a registry
serves from ``/blobs/`` only (CNCF Distribution answers a ``/manifests/`` GET of one with
404 or 500). So an entry of a manifest or index media type is read as a manifest; any
other entry is copied as a blob, before the index that lists it (a registry refuses an
index whose blobs it lacks: MANIFEST_BLOB_UNKNOWN). The index itself is written as it was
read, byte for byte, so its digest is kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..oci import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Index, Manifest, parse_manifest
from .layouts import LayoutError

__all__ = ["IndexEntries", "read_index_entries"]


@dataclass(frozen=True, slots=True)
class IndexEntries:
    """``manifests``: (entry, its bytes, parsed) of each manifest entry, in index order;
    ``blobs``: the entries that are blobs."""

    manifests: list[tuple[Descriptor, bytes, Manifest]]
    blobs: list[Descriptor]


async def read_index_entries(
    index: Index, read_manifest: Callable[[Descriptor], Awaitable[tuple[bytes, str]]], source: object,
) -> IndexEntries:
    """Read the manifest entries of ``index`` with ``read_manifest``; the other entries are
    blobs. A nested index is refused (LayoutError naming ``source``)."""
    manifests: list[tuple[Descriptor, bytes, Manifest]] = []
    blobs: list[Descriptor] = []
    for entry in index.manifests:
        if entry.media_type not in MANIFEST_TYPES | INDEX_TYPES:
            blobs.append(entry)
            continue
        raw, media_type = await read_manifest(entry)
        _, child = parse_manifest(raw, media_type)
        if not isinstance(child, Manifest):
            raise LayoutError(f"{source}: its entry {entry.digest} is an index too, and nested indexes "
                              "are not supported: copy each index it lists by its digest")
        manifests.append((entry, raw, child))
    return IndexEntries(manifests, blobs)
