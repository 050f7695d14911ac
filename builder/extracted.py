"""Extracted layers, one directory per diff_id, in overlayfs lower-dir format.

Layout (inside the build storage directory; the directory keeps the name ``snapshots``
it had before this module was called "extracted layers", so existing storage stays
valid)::

    snapshots/<diff_id hex>/     the layer's files; whiteouts as 0/0 character devices,
                                 opaque directories marked trusted.overlay.opaque=y
                                 (user.overlay.opaque=y in a non-root build's user
                                 namespace, as its overlay mounts read them)
    snapshots/.tmp-*/            extractions in progress (renamed into place when done)

A stage's root filesystem is the stack of its extracted layers (top first),
mounted as overlay lower dirs by the sandbox or flattened for COPY --from and the local
output. A layer is extracted at most once per storage directory, whichever build or
stage needs it; a step's freshly written upper directory is adopted as its extracted
layer without extracting anything.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tarfile
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from cas import Digest, Store

from .layers.changeset import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from .layers.pathres import clean_name
from .sandbox.userns import overlay_xattr

__all__ = ["EXTRACTED_DIR", "ExtractedLayers"]

# The directory under <storage>/builder (its name from before: see above).
EXTRACTED_DIR = "snapshots"


def _whiteouts(blob: Path) -> list[tuple[list[str], bool]]:
    from .layers.extract import open_layer

    out = []
    with open(blob, "rb") as f, tarfile.open(fileobj=open_layer(f), mode="r|",
                                             errors="surrogateescape") as tf:
        for member in tf:
            parts = clean_name(member.name)
            if parts and parts[-1] == OPAQUE_WHITEOUT:
                out.append((parts[:-1], True))
            elif parts and parts[-1].startswith(WHITEOUT_PREFIX) \
                    and not parts[-1].startswith(WHITEOUT_PREFIX * 2):
                out.append(([*parts[:-1], parts[-1][len(WHITEOUT_PREFIX):]], False))
    return out


def _extract(blob: Path, dest: Path) -> None:
    from .layers.extract import apply_layer  # only when a layer must be extracted

    dest.mkdir()
    apply_layer(blob, dest)
    for parts, opaque in _whiteouts(blob):
        target = dest.joinpath(*parts)
        if opaque:
            target.mkdir(parents=True, exist_ok=True)
            os.setxattr(target, overlay_xattr("opaque"), b"y", follow_symlinks=False)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(target):
                os.mknod(target, 0o600 | 0o020000, os.makedev(0, 0))


def _touch(path: Path) -> None:
    """Mark an extracted layer as used now (`pybuild builder prune` keeps recently used
    ones)."""
    try:
        os.utime(path)
    except OSError:
        pass  # removed meanwhile, or on a read-only storage: nothing to keep track of


class ExtractedLayers:
    """The extracted layers under ``root`` (``<storage>/builder/snapshots``)."""

    def __init__(self, root: Path, store: Store,
                 fetch: Callable[[Digest], Awaitable[None]] | None = None) -> None:
        self.root = root
        self.store = store
        # brings a blob that is not in the store yet into it (a lazy remote-cache layer:
        # builder.cache.lazy), before it is extracted
        self.fetch = fetch
        root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, diff_id: Digest) -> Path:
        return self.root / diff_id.encoded

    def adopt(self, diff_id: Digest, directory: Path) -> Path:
        """Make ``directory`` (a step's upper dir) the extracted layer of ``diff_id``
        (blocking)."""
        target = self.path(diff_id)
        if target.exists():
            shutil.rmtree(directory, ignore_errors=True)
        else:
            try:
                os.rename(directory, target)
            except OSError:  # someone else adopted it meanwhile
                shutil.rmtree(directory, ignore_errors=True)
        return target

    async def ensure(self, diff_id: Digest, blob: Digest) -> Path:
        """The extracted layer ``blob`` (uncompressed digest ``diff_id``), extracting it
        if no build did yet."""
        target = self.path(diff_id)
        if target.exists():
            await asyncio.to_thread(_touch, target)
            return target
        lock = self._locks.setdefault(diff_id.encoded, asyncio.Lock())
        async with lock:
            if target.exists():
                return target
            if self.fetch is not None and await self.store.stat(blob) is None:
                await self.fetch(blob)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            try:
                blob_file = tmp / "blob"
                await self.export_blob(blob, blob_file)
                await asyncio.to_thread(_extract, blob_file, tmp / "root")
                await asyncio.to_thread(os.rename, tmp / "root", target)
            finally:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        return target

    async def export_blob(self, blob: Digest, dest: Path) -> None:
        """Copy a CAS blob into the file ``dest``."""
        f = await asyncio.to_thread(open, dest, "wb")
        try:
            async for chunk in self.store.read(blob):
                await asyncio.to_thread(f.write, chunk)
        finally:
            await asyncio.to_thread(f.close)

    async def lowers(self, layers: Sequence[tuple[Digest, Digest]]) -> list[Path]:
        """Extracted-layer dirs for ``(diff_id, blob)`` pairs bottom first, returned top
        first (overlay lower dirs)."""
        paths = await asyncio.gather(*(self.ensure(d, b) for d, b in layers))
        return list(reversed(paths))
