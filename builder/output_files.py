"""The outputs of the root filesystem as files: ``type=local`` (a directory) and
``type=tar`` (its tar stream, for a sink of builder.outputs).

A new local directory is written under a temporary name beside it
(``.DIR.XXXXXXXX.tmp``, held while the build writes it: registry.client.leftovers) and
renamed into place once complete. One that a build killed outright (SIGKILL, a CI job's
timeout) left is removed by the next build that writes beside it (or into it, once it
exists), as the archives' temporaries are; never one a running build still writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from registry.client.leftovers import held_temporary, remove_abandoned

from .layers.longpath import NAME_MAX, short
from .output_errors import ExportError, cannot_write

__all__ = ["export_local", "tree_chunks"]


def _tar_tree(root: Path, f: object) -> None:
    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""  # numeric owners, not this host's names
        # whole seconds, rounded down as the layers round (a time before 1970 with a
        # fraction is the second before): no fraction in a pax mtime record
        info.mtime = int(info.mtime // 1)
        return info

    def add(tf: tarfile.TarFile, directory: Path, arc: str) -> None:
        # as tf.add(directory) walks it, each level named through longpath.short: an
        # image's path may be longer than the kernel takes below the build's directory
        with short(directory, NAME_MAX + 1) as at:
            for name in sorted(os.listdir(at)):
                path, arcname = Path(at, name), f"{arc}/{name}" if arc else name
                tf.add(path, arcname=arcname, recursive=False, filter=clean)
                if path.is_dir() and not path.is_symlink():
                    add(tf, directory / name, arcname)

    with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[call-overload]
        add(tf, root, "")


async def tree_chunks(root: Path) -> AsyncIterator[bytes]:
    """``root`` as a tar stream (written by a thread into a pipe, read here)."""
    r, w = os.pipe()
    writer = os.fdopen(w, "wb")

    def produce() -> None:
        try:
            _tar_tree(root, writer)
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    task = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while True:
            chunk = await asyncio.to_thread(os.read, r, 1 << 20)
            if not chunk:
                break
            yield chunk
    finally:
        os.close(r)  # a writer still writing gets EPIPE and stops
        with contextlib.suppress(BrokenPipeError):
            await task


def _give_to_user(root: Path) -> None:
    """Inside a non-root build's user namespace, make the user (its uid 0) own the tree
    ``root``: buildx writes a rootless BuildKit's local output as the user, and the user
    can then change and remove it. Modes are kept (chown clears setuid and setgid bits);
    what belongs to an id the namespace does not map (not the build's) is left alone.

    Each entry is named relative to its directory's descriptor (``os.fwalk``): below a
    long destination an image's deep path passes PATH_MAX, which no full path may."""

    def give(name: str, dir_fd: int | None) -> None:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_uid, st.st_gid) == (0, 0):
            return
        try:
            os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
        except PermissionError:
            return
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dir_fd)

    def fail(exc: OSError) -> None:
        raise exc  # not skipped: a tree left to the namespace's ids, the user cannot remove

    give(os.fspath(root), None)
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(root, onerror=fail):
        for name in dirnames + filenames:
            give(name, dir_fd)


async def export_local(dest: Path, rootfs: Callable[[Path], Awaitable[None]]) -> None:
    """Into an existing directory as buildx does; a new one appears only when complete
    (what a killed build left beside it is removed first: see above)."""
    from .sandbox.userns import in_user_namespace

    async def write(root: Path) -> None:
        await rootfs(root)
        if in_user_namespace():
            await asyncio.to_thread(_give_to_user, root)

    try:
        if await asyncio.to_thread(dest.exists):
            # what a killed build left beside it goes all the same: the user may have made
            # the directory since, and cannot remove files a non-root build's namespace owns
            await asyncio.to_thread(remove_abandoned, dest)
            await write(dest)
            return
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        fd, made = await asyncio.to_thread(held_temporary, dest, directory=True)
        tmp = Path(made)
        try:
            await write(tmp)  # also gives it the image root's owner and mode
            await asyncio.to_thread(os.rename, tmp, dest)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        finally:
            os.close(fd)  # held until renamed or removed
    except OSError as exc:
        raise ExportError(cannot_write(dest, exc)) from exc


