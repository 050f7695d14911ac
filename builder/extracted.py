"""Extracted layers, one directory per diff_id, in overlayfs lower-dir format.

Layout (inside the build storage directory; the directory keeps the name ``snapshots``
it had before this module was called "extracted layers", so existing storage stays
valid)::

    snapshots/<diff_id hex>/     the layer's files; whiteouts as 0/0 character devices
                                 (or empty files marked overlay.whiteout where the
                                 filesystem refuses those: sandbox.whiteouts),
                                 opaque directories marked trusted.overlay.opaque=y
                                 (user.overlay.opaque=y in a non-root build's user
                                 namespace, as its overlay mounts read them)
    snapshots/.tmp-*/            extractions in progress (renamed into place when done;
                                 two builds that extract one layer at once keep the first)

A stage's root filesystem is the stack of its extracted layers (top first),
mounted as overlay lower dirs by the sandbox or flattened for COPY --from and the local
output. A layer is extracted at most once per storage directory, whichever build or
stage needs it (a layer that hard-links to a file of a layer below it holds a copy of
that file, copied up from the layers below it where it was first extracted:
builder.layers.linkup); a step's freshly written upper directory is adopted as its extracted
layer without extracting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cas import Digest, Store
from cas.errors import StorageFull, StorageUnsupported, full_cause, missing_features

from .layers.errors import LayerFormatError, MissingLinkTarget
from .sandbox.userns import overlay_xattr

__all__ = ["EXTRACTED_DIR", "BlobReader", "ExtractedLayers"]

# The directory under <storage>/builder (its name from before: see above).
EXTRACTED_DIR = "snapshots"
_READ_BUFFER = 1 << 20


class BlobReader(io.RawIOBase):
    """A blocking reader, for a worker thread, of a store blob that the event loop
    ``loop`` reads (``Store.read``): the layer streams from the store into the extractor,
    with no copy of the blob on disk."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._chunks = chunks
        self._loop = loop
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    async def close_source(self) -> None:
        """Close the blob's iterator (on the event loop, after the reader is done)."""
        with contextlib.suppress(RuntimeError):
            await self._chunks.aclose()  # type: ignore[attr-defined]

    def readinto(self, b: Any) -> int:
        while not self._buf:
            chunk = asyncio.run_coroutine_threadsafe(self._next(), self._loop).result()
            if chunk is None:
                return 0
            self._buf = memoryview(chunk)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _extract(src: BinaryIO | Path, dest: Path, diff_id: Digest | None = None,
             lowers: Sequence[Path] | None = None) -> list[str]:
    """Extract the layer ``src`` to ``dest``; returns the device nodes left out (root of
    a user namespace may not make them). With ``diff_id``, a layer whose uncompressed
    stream has another digest is a LayerFormatError (``dest`` is then to be dropped).
    ``lowers``: the extracted layers below it (top first), where a hard link's target
    that the layer lacks is found and copied up from."""
    from .layers.extract import apply_layer  # only when a layer must be extracted
    from .sandbox.rootfs import find_in_lowers
    from .sandbox.whiteouts import make_whiteout

    def lower(rel: str) -> tuple[str, os.stat_result] | None:
        found = find_in_lowers(lowers or (), rel)
        return None if found is None else (str(found[1]), found[2])

    dest.mkdir()
    marks: list[tuple[list[str], bool]] = []  # whiteouts, found in the same single pass
    report = apply_layer(src, dest, marks=marks, diff_id=diff_id,
                         lower=None if lowers is None else lower)
    for parts, opaque in marks:
        if opaque:
            target = _mark_dir(dest, parts)
            if target is not None:
                os.setxattr(target, overlay_xattr("opaque"), b"y", follow_symlinks=False)
            continue
        parent = _mark_dir(dest, parts[:-1])
        if parent is not None and not os.path.lexists(parent / parts[-1]):
            make_whiteout(parent / parts[-1], "/".join(parts))
    return [why.split(": device node", 1)[0] for why in report.skipped
            if ": device node " in why]


def _mark_dir(dest: Path, parts: list[str]) -> Path | None:
    """The directory ``parts`` of the extracted layer ``dest``, where a whiteout goes,
    made where missing; None where the layer put a file or a symlink on the way (it hides
    whatever lower layers hold below it: there is nothing to mark). Never follows a
    symlink, which could lead out of ``dest``."""
    path = dest
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            path.mkdir()
            os.chmod(path, 0o755)  # whatever the umask, as a layer's unlisted parents
            continue
        if not stat.S_ISDIR(st.st_mode):
            return None
    return path


def devices_left_out(diff_id: Digest, names: Sequence[str]) -> str:
    """The warning for a layer whose device nodes a non-root build left out."""
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"WARNING: layer {diff_id} has device nodes ({shown}) that a non-root build "
            "cannot create (a user namespace may not make them): its RUN steps, and RUN "
            "mounts from it, do not see them, while COPY --from and the image keep them; "
            "build as root if a step needs them (docs/rootless.md)")


def _move_into_place(extracted: Path, target: Path) -> None:
    """Rename a finished extraction to ``target``, unless a build in another process (the
    lock in :meth:`ExtractedLayers.ensure` holds within one) put the same layer there
    first: then theirs is used and this one is dropped with the temporary directory."""
    try:
        os.rename(extracted, target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
            raise


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
                 fetch: Callable[[Digest], Awaitable[None]] | None = None,
                 stream: Callable[[Digest], AsyncIterator[bytes] | None] | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.store = store
        # brings a blob that is not in the store yet into it (a lazy remote-cache layer:
        # builder.cache.lazy), before it is extracted
        self.fetch = fetch
        # or, where it can: the blob's bytes as they arrive (also stored; verified and
        # committed once read to the end), extracted while it downloads
        self.stream = stream
        # told of what an extraction left out (device nodes in a user namespace)
        self.warn = warn
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

    def chained_path(self, chain_id: str) -> Path:
        """Where a layer that copied files up from the layers below it is kept: by its
        chain ID (the image spec's ChainID: the layer with every layer below it), since
        the same layer on other layers holds other copies."""
        return self.root / f"chain-{chain_id.partition(':')[2]}"

    async def ensure(self, diff_id: Digest, blob: Digest,
                     below: Sequence[Path] | None = None, chain_id: str | None = None) -> Path:
        """The extracted layer ``blob`` (uncompressed digest ``diff_id``), extracting it
        if no build did yet. ``below``: the extracted layers under it (top first), for a
        layer that hard-links to their files (without: a MissingLinkTarget), with
        ``chain_id`` (its chain ID there: the copy is kept by it)."""
        target = self.path(diff_id) if chain_id is None else self.chained_path(chain_id)
        if target.exists():
            await asyncio.to_thread(_touch, target)
            return target
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            if target.exists():
                return target
            missing = await self.store.stat(blob) is None
            streamed = self.stream(blob) if missing and self.stream is not None else None
            if streamed is None and missing and self.fetch is not None:
                await self.fetch(blob)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))
            chunks = streamed if streamed is not None else self.store.read(blob)
            try:
                reader = io.BufferedReader(BlobReader(chunks, asyncio.get_running_loop()),
                                           _READ_BUFFER)
                try:
                    # extracted layers are found by diff_id, whichever image names it:
                    # one whose content is not that diff_id must never be kept under it
                    left_out = await asyncio.to_thread(_extract, reader, tmp / "root", diff_id,
                                                       below)
                except LayerFormatError:
                    if streamed is not None:
                        # a blob that is not the one asked for says so first
                        async for _ in streamed:
                            pass
                    raise
                if streamed is not None:
                    # to its end, past what the extractor read: the blob is verified
                    # and committed before its extraction is used
                    async for _ in streamed:
                        pass
                await asyncio.to_thread(_move_into_place, tmp / "root", target)
                if left_out and self.warn is not None:
                    self.warn(devices_left_out(diff_id, left_out))
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                    # vfat and the like refuse a layer's symlinks, hard links and modes
                    try:
                        lacks = await asyncio.to_thread(missing_features, self.root)
                    except OSError:  # the probe could not tell: the step's error stands
                        lacks = None
                    if lacks is not None:
                        raise StorageUnsupported(self.root, lacks) from exc
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # Named now: once its files are removed, a file system out of inodes
                # has free ones again.
                cause = await asyncio.to_thread(full_cause, tmp, exc.errno)
                raise StorageFull("an extracted layer", tmp, cause) from exc
            finally:
                # (After a cancellation the worker may still be reading: then the
                # generator is finalized when it is collected.)
                with contextlib.suppress(RuntimeError):
                    await chunks.aclose()  # type: ignore[attr-defined]
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        return target

    async def lowers(self, layers: Sequence[tuple[Digest, Digest]],
                     lazy: Callable[[Digest, Digest], Awaitable[Path | None]] | None = None
                     ) -> list[Path]:
        """Extracted-layer dirs for ``(diff_id, blob)`` pairs bottom first, returned top
        first (overlay lower dirs). ``lazy``: a layer not extracted yet may come from it
        instead (a FUSE mount of a layer still at its cache source, builder.lazyfs;
        None: extract it). Layers are extracted at once, each on its own; one that
        hard-links to a file of the layers below is extracted again once they are."""

        chains = _chain_ids([d for d, _ in layers])

        async def one(diff_id: Digest, blob: Digest, chain_id: str) -> Path | None:
            chained = self.chained_path(chain_id)
            if await asyncio.to_thread(chained.exists):  # copied up from these lowers before
                await asyncio.to_thread(_touch, chained)
                return chained
            if lazy is not None and not await asyncio.to_thread(self.path(diff_id).exists):
                mounted = await lazy(diff_id, blob)
                if mounted is not None:
                    return mounted
            try:
                return await self.ensure(diff_id, blob)
            except MissingLinkTarget as exc:
                if exc.searched:
                    raise
                return None  # extracted below, on top of its lower layers

        found = await asyncio.gather(*(one(d, b, c) for (d, b), c in zip(layers, chains, strict=True)))
        paths: list[Path] = []
        for (diff_id, blob), chain_id, path in zip(layers, chains, found, strict=True):
            paths.append(path if path is not None else
                         await self.ensure(diff_id, blob, list(reversed(paths)), chain_id))
        return list(reversed(paths))


def _chain_ids(diff_ids: Sequence[Digest]) -> list[str]:
    """The image spec's ChainID of each layer of ``diff_ids`` (bottom first)."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(str(diff_id) if not out else
                   "sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out
