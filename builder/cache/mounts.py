"""``RUN --mount=type=cache`` contents in a remote build cache (``--cache-to
...,cache-mounts=true``), so that a package manager's download cache survives from one
runner to the next.

- **Export**: each cache id that a RUN step of this build mounted and that has a
  directory here becomes one layer blob (pybuild's chunked-frame tar of the cache's first
  instance ``0/``: the directory ``shared`` and ``locked`` mounts use, and ``private``
  mounts when they do not find it busy), listed under ``mounts`` in the cache manifest
  and among the artifact's layers. Owners are recorded as numeric ids as the build sees
  them (a non-root build: the ids inside its user namespace, the image's ids), file times
  as they are. The same contents give the same blob, so an unchanged cache costs a HEAD.
- **Import**: a cache id from ``--cache-from`` is restored only when a RUN step that
  mounts it must run and this runner has no directory for it yet (a local cache wins, as
  a local entry does); its blob is fetched then, never for a cached step.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from cas import Digest, Store
from cas.holders import cache_holder

from ..sandbox.caches import cache_root
from .entries import CachedLayer
from .manifest import MountEntry

if TYPE_CHECKING:
    from ..sandbox.spec import CacheMount

__all__ = ["export_mounts", "restore_mount"]


def _instance(cache_dir: Path, cache_id: str) -> Path:
    return cache_root(cache_dir, cache_id) / "0"


async def export_mounts(ids: Collection[str], cache_dir: Path, store: Store,
                        work: Path) -> tuple[list[MountEntry], list[tuple[str, Digest]]]:
    """Write every cache in ``ids`` that has a directory as a layer blob into ``store``;
    returns the entries and the ``(holder, digest)`` links that keep the blobs until
    the export is done (the caller unlinks them)."""
    from ..layers.importdir import import_directory

    entries: list[MountEntry] = []
    links: list[tuple[str, Digest]] = []
    for cache_id in sorted(ids):
        src = _instance(cache_dir, cache_id)
        if not await asyncio.to_thread(src.is_dir):
            continue
        tmp = Path(tempfile.mkdtemp(prefix="mount-", dir=work)) / "layer"
        try:
            def write(src: Path = src, tmp: Path = tmp):  # type: ignore[no-untyped-def]
                with open(tmp, "wb") as f:
                    return import_directory(src, f)
            blob = await asyncio.to_thread(write)
            holder = cache_holder(f"mount-{cache_root(cache_dir, cache_id).name}")
            if await store.stat(blob.digest) is None:
                ingest = await store.begin_ingest(algorithm=blob.digest.algorithm)
                try:
                    f = await asyncio.to_thread(open, tmp, "rb")
                    try:
                        while data := await asyncio.to_thread(f.read, 4 << 20):
                            await ingest.write(data)
                    finally:
                        f.close()
                    await ingest.commit(blob.digest, link=holder)
                finally:
                    await ingest.abort()
            else:
                await store.link(holder, blob.digest)
            links.append((holder, blob.digest))
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp.parent, True)
        entries.append(MountEntry(cache_id, CachedLayer(
            str(blob.digest), blob.size, str(blob.diff_id), blob.media_type)))
    return entries, links


def restore_mount(blob: Path, cache_dir: Path, mount: CacheMount) -> bool:
    """Unpack the exported cache ``blob`` as ``mount``'s cache unless this runner has
    one already (blocking); True when it was restored. The directory appears whole or
    not at all."""
    from ..layers.extract import apply_layer

    target = _instance(cache_dir, mount.cache_id)
    if target.exists():
        return False
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    (root / "id").write_text(mount.cache_id + "\n")
    tmp = Path(tempfile.mkdtemp(prefix=".restore-", dir=root))
    try:
        os.chown(tmp, mount.uid, mount.gid)
        os.chmod(tmp, mount.mode)
        apply_layer(blob, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            return False  # another build made it meanwhile: theirs wins
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
