"""Host directories behind ``--mount=type=cache``, shared between steps and builds.

Layout under the caller's cache directory::

    cache_dir/
        <sha256(cache_id)[:32]>/
            id          the cache's identity (CacheMount.cache_id), for people reading
            0/          the cache's first instance: what shared/locked mounts use
            0.lock      flock: shared (LOCK_SH) by `shared`, exclusive by `locked`/`private`
            0.init      flock: held by the one build that makes 0/
            1/ 1.lock   more instances, made when `private` finds the others busy

A new instance directory is created owned by the mount's ``uid``/``gid`` with its ``mode``
(BuildKit does the same on first use), or, for a mount with ``from=``, as a copy of its
``seed`` directory (owners, modes, times, xattrs and hard links kept); later mounts leave
it alone. Either way it appears whole: it is made under a temporary name and renamed
(``<n>.init`` is the flock that lets one build at a time make it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .spec import CacheMount, Sharing

__all__ = ["cache_root", "lease_caches"]


def cache_root(cache_dir: Path, cache_id: str) -> Path:
    """The directory of cache ``cache_id`` (its instances ``0/``, ``1/``... inside)."""
    return cache_dir / hashlib.sha256(cache_id.encode()).hexdigest()[:32]


def _copy_tree(src: Path, dst: Path) -> None:
    """``dst`` (absent) as a copy of the directory ``src``, owners and hard links kept."""
    links: dict[tuple[int, int], str] = {}

    def copy(source: str, dest: str) -> None:
        st = os.lstat(source)
        if st.st_nlink > 1 and (st.st_dev, st.st_ino) in links:
            os.link(links[st.st_dev, st.st_ino], dest)
            return
        if stat.S_ISREG(st.st_mode):
            shutil.copy2(source, dest, follow_symlinks=False)
        else:  # a FIFO or a device node: made anew, never opened
            try:
                os.mknod(dest, st.st_mode, st.st_rdev)
            except PermissionError:
                if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                    return  # a user namespace may not make one: left out, as extraction does
                raise
            shutil.copystat(source, dest, follow_symlinks=False)
        links[st.st_dev, st.st_ino] = dest

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    for dirpath, dirnames, filenames in os.walk(dst):
        rel = os.path.relpath(dirpath, dst)
        for name in (".", *dirnames, *filenames):
            st = os.lstat(os.path.join(src, rel, name))
            dest = os.path.join(dirpath, name)
            if not os.path.lexists(dest):
                continue  # a device node left out
            os.lchown(dest, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):  # chown dropped setuid and setgid
                os.chmod(dest, stat.S_IMODE(st.st_mode))


def _instance(root: Path, index: int, mount: CacheMount) -> Path:
    path = root / str(index)
    if path.is_dir():  # made before, or by a build running beside this one
        return path
    fd = _lock(root / f"{index}.init", fcntl.LOCK_EX)
    assert fd is not None  # a blocking flock returns only once it holds the lock
    try:
        if path.is_dir():
            return path
        tmp = Path(tempfile.mkdtemp(prefix=f".{index}.new-", dir=root))
        try:
            if mount.seed is not None:
                os.rmdir(tmp)
                _copy_tree(mount.seed, tmp)
            else:
                os.chown(tmp, mount.uid, mount.gid)
                os.chmod(tmp, mount.mode)
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        os.close(fd)
    return path


def _lock(path: Path, flags: int) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def lease_caches(
    cache_dir: Path, mounts: Sequence[CacheMount]
) -> Iterator[list[Path]]:
    """Lock and yield one host directory per cache mount, in order; unlock on exit.

    ``locked`` mounts wait for other users of the same cache (blocking the calling thread).
    Every lease takes its caches in one order (by id), whatever the order of ``mounts``:
    two steps that mount the same caches in different orders never each hold one and wait
    for the other's.
    """
    fds: list[int] = []
    paths: dict[int, Path] = {}
    held: dict[str, Path] = {}  # one step mounting a cache twice must not wait on itself
    try:
        for i in sorted(range(len(mounts)), key=lambda i: mounts[i].cache_id):
            mount = mounts[i]
            if mount.cache_id in held and mount.sharing is not Sharing.PRIVATE:
                paths[i] = held[mount.cache_id]
                continue
            root = cache_root(cache_dir, mount.cache_id)
            root.mkdir(parents=True, exist_ok=True)
            (root / "id").write_text(mount.cache_id + "\n")
            if mount.sharing is Sharing.PRIVATE:
                index = 0
                while (fd := _lock(root / f"{index}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)) is None:
                    index += 1
            else:
                index = 0
                flags = fcntl.LOCK_SH if mount.sharing is Sharing.SHARED else fcntl.LOCK_EX
                fd = _lock(root / "0.lock", flags)
                assert fd is not None  # a blocking flock returns only once it holds the lock
            fds.append(fd)
            paths[i] = _instance(root, index, mount)
            held.setdefault(mount.cache_id, paths[i])
        yield [paths[i] for i in range(len(mounts))]
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the flock
