"""``pybuild builder prune``: forget old build-cache entries and what only they kept.

What goes:

- step entries of the build cache (``builder/cache.db``, table ``steps``) created before
  ``older_than`` seconds ago (all with ``--all``); their layer blobs (every one the key
  linked: a step run again links its new layer to the same key) lose the holder
  ``cache:<key>``, so ``pybuild storage gc`` reclaims those that nothing else links;
- extracted layers (``builder/snapshots/<diff_id>``) that no build used since then (all
  with ``--all``) and that no remaining entry and no local image (``pybuild images``)
  holds - a later build extracts again what it needs;
- remembered context-file hashes (table ``file_hashes``) of files that no longer exist
  (all of them with ``--all``);
- the work directories (``builder/tmp/build-*``) of builds that were killed: a build
  removes its own when it ends, so under the exclusive lock any that is left is a dead
  build's (one that still holds a mount is left alone);
- ``RUN --mount=type=cache`` directories (``builder/cache-mounts/<id hash>``,
  :mod:`builder.sandbox.caches`) last used before then (all with ``--all``), as BuildKit's
  ``docker builder prune`` removes its ``exec.cachemount`` records, with or without
  ``--all``; one a step holds (its ``<n>.lock``) is left alone. ``only_mounts`` prunes
  these alone (``--filter type=exec.cachemount``).
- with ``keep_bytes`` (``--keep-storage SIZE``, as ``docker builder prune``'s), then the
  least recently used extracted layers, step entries (counted with their layer blobs,
  which lose the entries' holders: ``pybuild storage gc``'s to reclaim) and cache mounts,
  until those left take at most SIZE. Each records when a build last used it.

A build holds ``builder/lock`` shared while it runs; prune takes it exclusively, so it
never removes an extracted layer under a running build (it waits up to ``wait`` seconds, then
says that a build is running).

A killed build's work directory does not wait for prune: as BuildKit cleans its leftovers at
its next start, every build begins by removing those whose build is gone
(:func:`drop_orphaned_work_dirs`). A build holds a flock on its directory's ``.owner``
file while it runs (:func:`new_work_dir`); the kernel releases it when the process dies,
however, and it is not inherited by what the build runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cas import Store, StoreConfig, check_owner, open_store
from cas.holders import cache_holder
from cas.reserve import release_reserve

from .cache import CLAMP, BuildCache
from .cache.sqlite import USE_EVERY
from .extracted import EXTRACTED_DIR

__all__ = ["WORK_OWNER", "BuildLock", "PruneError", "PruneReport", "drop_orphaned_work_dirs",
           "new_work_dir", "prune", "unlink_steps"]

WORK_OWNER = ".owner"  # in a work directory: locked (flock) by its build while it runs


class PruneError(Exception):
    """The cache cannot be pruned now; the message says why and what to do."""


@dataclass(frozen=True)
class PruneReport:
    entries: int  # build-cache step entries removed (cached steps, as docker counts them)
    extracted: int  # extracted layers removed
    extracted_bytes: int  # their allocated bytes
    file_hashes: int  # remembered context-file hashes removed
    work_dirs: int = 0  # work directories of killed builds removed
    work_bytes: int = 0  # their allocated bytes
    cache_mounts: int = 0  # RUN --mount=type=cache directories removed
    cache_mount_bytes: int = 0  # their allocated bytes
    # entries of a cached layer's copy with its times clamped to a SOURCE_DATE_EPOCH
    # (builder.steps.clamp): records of no step, so not among ``entries``
    clamped: int = 0


class BuildLock:
    """``builder/lock``: held shared by every running build, exclusively by a prune.
    ``acquire`` blocks: call it from a worker thread."""

    def __init__(self, builder_dir: Path) -> None:
        self._dir = builder_dir
        self._fd = -1

    def acquire(self, *, exclusive: bool, wait: float | None = None) -> None:
        """Take the lock; ``wait`` (seconds, None: as long as it takes) bounds the wait,
        then PruneError says that a build is running."""
        self._dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            if wait is None:
                fcntl.flock(fd, mode)
            else:
                deadline = time.monotonic() + wait
                while True:
                    try:
                        fcntl.flock(fd, mode | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise PruneError(
                                "a build is running on this storage; prune when it has "
                                "finished (or let the prune wait: --wait SECONDS)"
                            ) from None
                        time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = -1


async def prune(storage: Path, *, older_than: float | None, wait: float = 0.0,
                only_mounts: bool = False, keep_bytes: int | None = None) -> PruneReport:
    """Prune the build cache under ``storage``; ``older_than`` None removes every entry,
    ``math.inf`` none by age; ``only_mounts``: only the cache mounts' directories;
    ``keep_bytes``: then remove the least recently used extracted layers and cache mounts
    until those left take at most that many bytes (``--keep-storage``)."""
    bdir = storage / "builder"
    check_owner(storage)
    release_reserve(storage)  # a full disk: room to open the build cache (cas.reserve)
    lock = BuildLock(bdir)
    await asyncio.to_thread(lock.acquire, exclusive=True, wait=wait)
    try:
        cutoff = None if older_than is None else time.time() - older_than
        # builder.build keeps them here (its cache_mounts=)
        mounts, mounts_size = await asyncio.to_thread(_drop_cache_mounts, bdir / "cache-mounts",
                                                      cutoff)
        if only_mounts:
            if keep_bytes is not None:
                more, more_size, _, _ = await asyncio.to_thread(_keep_within, bdir, keep_bytes,
                                                                False)
                mounts, mounts_size = mounts + more[1], mounts_size + more_size[1]
            return PruneReport(0, 0, 0, 0, cache_mounts=mounts, cache_mount_bytes=mounts_size)
        cache = BuildCache(bdir / "cache.db")
        try:
            # math.inf: none by age (--keep-storage alone); the cutoff is then -inf
            removed = [] if cutoff == -math.inf else await asyncio.to_thread(cache.prune_steps,
                                                                              cutoff)
            keep = {layer.diff_id for layer in await asyncio.to_thread(cache.layers)}
            hashes = await asyncio.to_thread(cache.prune_file_hashes, older_than is None)
        finally:
            cache.close()
        async with await open_store(StoreConfig(storage)) as store:
            for key, _, _ in removed:
                # Every blob the key links, not only the entry's last layer: a step run
                # again (--no-cache, or a RUN whose output differs) links its new layer to
                # the same key and replaces the entry.
                holder = cache_holder(key)
                for digest in await store.linked(holder):
                    await store.unlink(holder, digest)
            keep |= await _image_diff_ids(storage, store)
        count, size = await asyncio.to_thread(_drop_extracted, bdir / EXTRACTED_DIR, keep,
                                              cutoff)
        work, work_size = await asyncio.to_thread(_drop_work_dirs, bdir / "tmp")
        dropped: list[str] = []
        if keep_bytes is not None:
            more, more_size, _, dropped = await asyncio.to_thread(_keep_within, bdir,
                                                                  keep_bytes, True)
            count, size = count + more[0], size + more_size[0]
            mounts, mounts_size = mounts + more[1], mounts_size + more_size[1]
            await unlink_steps(storage, dropped)
        # not facts entries (a step's, with no layer) nor clamped copies of layers
        steps = len(dropped) + sum(1 for _, layer, what in removed
                                   if layer.facts is None and what != CLAMP)
        clamped = sum(1 for _, _, what in removed if what == CLAMP)
        return PruneReport(steps, count, size, hashes, work, work_size, mounts, mounts_size,
                           clamped)
    finally:
        lock.release()


async def unlink_steps(storage: Path, keys: list[str]) -> None:
    """Unlink the blobs of the removed cached steps ``keys`` (holder ``cache:<key>``):
    ``pybuild storage gc`` reclaims those nothing else links."""
    if not keys:
        return
    async with await open_store(StoreConfig(storage)) as store:
        for key in keys:
            holder = cache_holder(key)
            for digest in await store.linked(holder):
                await store.unlink(holder, digest)


async def _image_diff_ids(storage: Path, store: Store) -> set[str]:
    """The diff_ids of every local image's layers (their extracted layers stay)."""
    from registry.client.image_store import ImageNotFound, ImageStore

    out: set[str] = set()
    images = await ImageStore.open(storage, store=store)
    try:
        for image in await images.list():
            with contextlib.suppress(ImageNotFound, ValueError, KeyError):
                _, config = await images.get(image.ref)
                out.update(str(d) for d in config.rootfs.diff_ids)
    finally:
        await images.close()
    return out


def _drop_extracted(root: Path, keep: set[str], before: float | None) -> tuple[int, int]:
    """Remove the extracted layers not in ``keep`` and last used (their mtime: builds touch what they
    use) before ``before`` (None: whenever)."""
    count = size = 0
    if not root.is_dir():
        return 0, 0
    for entry in root.iterdir():
        # No build runs (the lock): a .tmp- directory is what a killed build left.
        stale = before is None or entry.lstat().st_mtime < before
        if entry.name.startswith(".tmp-") or (stale and f"sha256:{entry.name}" not in keep):
            size += _allocated(entry)
            shutil.rmtree(entry, ignore_errors=True)
            count += not entry.name.startswith(".tmp-")
    return count, size


def _keep_within(bdir: Path, keep_bytes: int, layers: bool, since: float = math.inf
                 ) -> tuple[tuple[int, int, int], tuple[int, int, int], int, list[str]]:
    """Remove the least recently used extracted layers, cached steps (both with
    ``layers``) and cache mounts until those left take at most ``keep_bytes``, as
    BuildKit's ``--keep-storage`` (no build runs: the lock; a cache mount a step holds
    stays, and so does what was used at or after ``since``). A cached step counts with its
    layer blob (the entries that share one blob go together, used when any of them was).
    ``((layers, mounts, steps) removed, (their bytes), bytes left, the removed steps' keys)``:
    the caller unlinks their blobs (holder ``cache:<key>``)."""
    # (last used, bytes, name, 0 layer | 1 mount | 2 steps, path or the steps' keys)
    found: list[tuple[float, int, str, int, Path | list[str]]] = []
    extracted, mounts = bdir / EXTRACTED_DIR, bdir / "cache-mounts"
    for kind, root in enumerate((extracted, mounts)):
        if (kind == 0 and not layers) or not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.name.startswith((".tmp-", ".prune-")) or entry.is_symlink() or not entry.is_dir():
                continue
            with contextlib.suppress(OSError):
                used = (entry / "id").lstat().st_mtime if kind else entry.lstat().st_mtime
                found.append((used, _allocated(entry), entry.name, kind, entry))
    cache = BuildCache(bdir / "cache.db") if layers and (bdir / "cache.db").exists() else None
    try:
        blobs: dict[str, tuple[float, int, list[str]]] = {}
        for key, used, layer in [] if cache is None else cache.steps_by_use():
            last, _, keys = blobs.get(layer.digest, (used, 0, []))
            blobs[layer.digest] = (max(last, used), layer.size, [*keys, key])
        found += [(used, size, digest, 2, keys) for digest, (used, size, keys) in blobs.items()]
        total = sum(size for _, size, _, _, _ in found)
        count, removed, dropped = [0, 0, 0], [0, 0, 0], []
        for used, size, _, kind, what in sorted(found, key=lambda f: (f[0], f[2])):
            if total <= keep_bytes:
                break
            # The build that just ended used it (builder.autogc); a step's use is recorded
            # once per USE_EVERY, so each one used that long before the build may be its.
            if used >= (since - USE_EVERY if kind == 2 else since):
                continue
            if isinstance(what, list):
                dropped += what
            elif kind == 0:
                shutil.rmtree(what, ignore_errors=True)
            elif not _drop_mount(what, mounts):
                continue  # a running step has it mounted
            total -= size
            count[kind] += len(what) if isinstance(what, list) else 1
            removed[kind] += size
        if cache is not None and dropped:
            cache.drop_steps(dropped)
    finally:
        if cache is not None:
            cache.close()
    return (count[0], count[1], count[2]), (removed[0], removed[1], removed[2]), total, dropped


def _drop_mount(entry: Path, mounts: Path) -> bool:
    """Remove the cache mount ``entry`` unless a step holds it (then False)."""
    fds: list[int] = []
    try:
        if not all(_hold(lock, fds) for lock in entry.glob("*.lock")):
            return False
        gone = mounts / f".prune-{entry.name}"
        os.rename(entry, gone)
        shutil.rmtree(gone, ignore_errors=True)
        return True
    finally:
        for fd in fds:
            os.close(fd)


def _drop_work_dirs(root: Path) -> tuple[int, int]:
    """Remove what killed builds left in ``root`` (``builder/tmp``; no build runs: the
    lock), except a directory under which something is still mounted (rmtree would
    delete through the mount)."""
    count = size = 0
    if not root.is_dir():
        return 0, 0
    mounts = _mount_points()
    for entry in root.iterdir():
        inside = str(entry.absolute()) + "/"
        if any(m == inside[:-1] or m.startswith(inside) for m in mounts):
            continue
        size += _allocated(entry)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        count += 1
    return count, size


def new_work_dir(root: Path) -> tuple[Path, int]:
    """A new work directory ``root/build-XXXXXXXX`` and the descriptor of its
    :data:`WORK_OWNER` file, locked until the caller closes it (or its process dies)."""
    while True:
        work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        fd = os.open(work / WORK_OWNER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(work / WORK_OWNER).st_ino == os.fstat(fd).st_ino:
                return work, fd
        except OSError:
            pass
        # a starting build found the file before the lock was taken, and removed it
        os.close(fd)


def drop_orphaned_work_dirs(root: Path) -> int:
    """Remove the work directories in ``root`` whose build is gone: those whose
    :data:`WORK_OWNER` lock is free (never one a build holds, in this process or another),
    unless something is still mounted under one. One without an owner file (being made,
    or an earlier release's) is left to ``builder prune``. Returns how many went."""
    try:
        entries = [e for e in root.iterdir() if e.name.startswith("build-")]
    except OSError:
        return 0
    count = 0
    mounts: list[str] | None = None
    for entry in entries:
        try:
            fd = os.open(entry / WORK_OWNER, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its build is running
            mounts = _mount_points() if mounts is None else mounts
            inside = str(entry.absolute()) + "/"
            if any(m == inside[:-1] or m.startswith(inside) for m in mounts):
                continue  # rmtree would delete through the mount
            shutil.rmtree(entry, ignore_errors=True)  # the lock held: no build takes it
            count += 1
        finally:
            os.close(fd)
    return count


def _drop_cache_mounts(root: Path, before: float | None) -> tuple[int, int]:
    """Remove the cache mounts' directories in ``root`` last used (the mtime of their
    ``id``, which every lease rewrites) before ``before`` (None: whenever), except one
    whose lock a step holds. Each goes by a rename first: a build never finds half of one."""
    count = size = 0
    if not root.is_dir():
        return 0, 0
    for entry in root.iterdir():
        if entry.name.startswith(".prune-"):  # what a killed prune left
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if entry.is_symlink() or not entry.is_dir():
            continue
        try:
            used = (entry / "id").lstat().st_mtime
        except OSError:
            used = entry.lstat().st_mtime
        if before is not None and used >= before:
            continue
        fds: list[int] = []
        try:
            if not all(_hold(lock, fds) for lock in entry.glob("*.lock")):
                continue  # a running step has it mounted
            size += _allocated(entry)
            gone = root / f".prune-{entry.name}"
            os.rename(entry, gone)
            shutil.rmtree(gone, ignore_errors=True)
            count += 1
        finally:
            for fd in fds:
                os.close(fd)
    return count, size


def _hold(lock: Path, fds: list[int]) -> bool:
    """Take ``lock`` exclusively without waiting (its descriptor joins ``fds``); False
    when someone holds it."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return True  # gone: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    fds.append(fd)
    return True


def _mount_points() -> list[str]:
    """Where this mount namespace has file systems mounted (``/proc/self/mountinfo``,
    octal escapes decoded)."""
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return []
    points = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4:
            points.append(fields[4].encode().decode("unicode_escape").encode("latin-1")
                          .decode(errors="surrogateescape"))
    return points


def _allocated(path: Path) -> int:
    """The bytes the tree ``path`` takes on disk (its deep paths too: layers.scan.walk)."""
    from .layers.errors import ChangesetError
    from .layers.scan import walk

    total = 0
    with contextlib.suppress(OSError, ChangesetError):  # what goes meanwhile
        for _, _, st in walk(os.fspath(path)):
            total += st.st_blocks * 512
    return total
