"""Lazy layers mounted with FUSE: a RUN step whose lower layers include a layer that is
still at its cache source (:mod:`builder.cache.lazy`) and has a TOC (:mod:`.toc`) reads
that layer through a read-only FUSE mount (:mod:`.fuse`) instead of fetching and
extracting the whole blob. Only the TOC is fetched when the layer is mounted; a file's
bytes are fetched (HTTP ``Range``, the members that hold it, each checked against the
TOC's sha256) the first time something reads it, and kept in the build's work
directory for the later reads.

When FUSE cannot be used (no ``/dev/fuse``, no permission to open it or to mount: a
non-root build needs ``/dev/fuse`` mode 0666, as stock Debian has it) or the TOC cannot
be trusted, the layer is fetched and extracted as before, and the progress says why in
one line.

Layout (``root``, inside the build's work directory)::

    root/mnt-<blob hex>/     the mount point of a lazy layer
    root/files/<blob hex>/<inode>   a file's bytes, once read
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cas import Digest

from ..layers.inflate import gunzip_member
from ..sandbox.userns import in_user_namespace
from .fuse import FuseMount, FuseUnavailable
from .toc import MAX_MEMBER, Member, Toc, TocEntry, TocError, parse_toc
from .tree import Inode, Tree

if TYPE_CHECKING:
    from ..cache.lazy import RemoteLayers

__all__ = ["LazyMounts"]

# one Range request fetches at most this many compressed bytes
_FETCH_BATCH = 8 << 20


class _Info(Protocol):
    def info(self, text: str) -> None: ...


class LazyMounts:
    """The FUSE-mounted lazy layers of one build (``remote.tocs``: the TOCs the imported
    caches name). ``fetched``: the file bytes fetched so far (compressed, as they crossed
    the wire)."""

    def __init__(self, remote: RemoteLayers, root: Path, progress: _Info,
                 opaque_xattr: str) -> None:
        self.remote = remote
        self.root = root
        self.progress = progress
        self.opaque_xattr = opaque_xattr
        # in a user namespace (no overlay index=on), a step over hard links copies its
        # root: builder.sandbox.runner
        self.copies_links = in_user_namespace()
        self.fetched = 0
        self.unusable: str | None = None
        self._mounts: dict[Digest, tuple[FuseMount, Toc]] = {}
        self._refused: set[Digest] = set()
        self._locks: dict[Digest, asyncio.Lock] = {}
        self._file_locks: dict[tuple[Digest, int], threading.Lock] = {}
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def can_mount(self, blob: Digest) -> bool:
        """Whether :meth:`lower` may serve ``blob`` without fetching it (it is lazy and
        has a TOC, and FUSE has not been found unusable)."""
        return (self.unusable is None and blob in self.remote.tocs and blob not in self._refused
                and bool(self.remote.pending([blob])))

    async def lower(self, diff_id: Digest, blob: Digest) -> Path | None:
        """The mount point of the lazy layer ``blob``, mounting it if needed; None: fetch
        and extract it instead (it is not lazy, has no usable TOC, or FUSE is unusable)."""
        if not self.can_mount(blob):
            found = self._mounts.get(blob)
            return found[0].target if found else None
        lock = self._locks.setdefault(blob, asyncio.Lock())
        async with lock:
            if blob in self._mounts:
                return self._mounts[blob][0].target
            if not self.can_mount(blob):
                return None
            self._loop = asyncio.get_running_loop()
            toc_desc = self.remote.tocs[blob]
            layer = self.remote.sources[blob][1]
            try:
                await self.remote.fetch(toc_desc.digest)
                data = await self.remote.store.read_bytes(toc_desc.digest)
                toc = await asyncio.to_thread(parse_toc, data, str(blob), layer.size)
                tree = await asyncio.to_thread(Tree, toc, self.opaque_xattr)
            except (TocError, OSError, ValueError) as exc:
                self._refused.add(blob)
                self.progress.info(f"layer {blob} is fetched whole: its TOC cannot be used "
                                   f"({exc})")
                return None
            if self.copies_links and any(n.nlink > 1 and not n.is_dir
                                         for n in tree.inodes.values()):
                # the step's root is copied (the snapshot differ keeps the links): every
                # file would be read through the mount, slower than one fetch
                self._refused.add(blob)
                self.progress.info(f"layer {blob} is fetched whole: it holds hard links, "
                                   "which a non-root build's step copies (docs/rootless.md)")
                return None
            target = self.root / f"mnt-{blob.encoded}"
            await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
            try:
                mount = await asyncio.to_thread(FuseMount, tree, target,
                                                lambda node, off, size: self._read(
                                                    blob, toc, node, off, size))
            except FuseUnavailable as exc:
                if self.unusable is None:  # one line, whichever layer met it first
                    self.unusable = exc.strerror or str(exc)
                    self.progress.info(f"lazy layers are fetched whole: FUSE is unusable "
                                       f"here ({self.unusable}); see docs/rootless.md")
                return None
            self._mounts[blob] = (mount, toc)
            self.progress.info(f"layer {blob} mounted lazily from its cache source "
                               f"({len(toc.entries)} entries; files are fetched when read)")
            return target

    async def close(self) -> None:
        """Unmount every lazy layer (the build's work directory removes the files)."""
        mounts = [m for m, _ in self._mounts.values()]
        self._mounts.clear()
        await asyncio.gather(*(asyncio.to_thread(m.close) for m in mounts))

    # -- reads, in FUSE server threads ------------------------------------------------------
    def _read(self, blob: Digest, toc: Toc, node: Inode, offset: int, size: int) -> bytes:
        path = self.root / "files" / blob.encoded / str(node.ino)
        with self._guard:
            lock = self._file_locks.setdefault((blob, node.ino), threading.Lock())
        with lock:
            if not path.exists():
                self._fetch_file(blob, toc, node, path)
        with open(path, "rb") as f:
            return os.pread(f.fileno(), size, offset)

    def _fetch_file(self, blob: Digest, toc: Toc, node: Inode, path: Path) -> None:
        assert node.entry is not None and self._loop is not None
        entry = node.entry
        members = toc.spans(entry.offset, entry.size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            self._write_file(blob, entry, members, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.rename(tmp, path)

    def _write_file(self, blob: Digest, entry: TocEntry, members: list[Member],
                    tmp: Path) -> None:
        assert self._loop is not None
        written = 0
        with open(tmp, "wb") as out:
            i = 0
            while i < len(members):
                batch = [members[i]]
                while i + len(batch) < len(members) and \
                        members[i + len(batch)].coff + members[i + len(batch)].clen \
                        - batch[0].coff <= _FETCH_BATCH:
                    batch.append(members[i + len(batch)])
                i += len(batch)
                start, end = batch[0].coff, batch[-1].coff + batch[-1].clen
                data = asyncio.run_coroutine_threadsafe(
                    self.remote.read_range(blob, start, end - 1), self._loop).result()
                if len(data) != end - start:
                    raise OSError(5, f"layer {blob}: the source sent {len(data)} bytes "
                                     f"for {end - start}")
                with self._guard:
                    self.fetched += len(data)
                for m in batch:
                    raw = data[m.coff - start:m.coff - start + m.clen]
                    if hashlib.sha256(raw).hexdigest() != m.sha256:
                        raise OSError(5, f"layer {blob}: a member differs from its TOC")
                    plain = gunzip_member().decompress(raw, MAX_MEMBER)
                    if len(plain) != m.ulen:
                        raise OSError(5, f"layer {blob}: a member decodes to {len(plain)} "
                                         f"bytes, its TOC says {m.ulen}")
                    lo = max(entry.offset - m.uoff, 0)
                    hi = min(entry.offset + entry.size - m.uoff, m.ulen)
                    out.write(plain[lo:hi])
                    written += hi - lo
        if written != entry.size:
            raise OSError(5, f"layer {blob}: {entry.name} has {written} bytes, not {entry.size}")
