"""Paths longer than the kernel takes (PATH_MAX, 4096 bytes with its NUL), made usable.

A path inside an image may be up to PATH_MAX long (BuildKit builds ~4,000-byte ones),
but the build reads it below its storage directory (``<storage>/builder/snapshots/<diff
id>/...``, a step's upper directory): the full path can pass PATH_MAX, where every
path-based call fails with ENAMETOOLONG. :func:`short` names the same file by a path
that fits: the directory the first part of the path leads to, opened piece by piece
(each piece resolved relative to the one before: ``openat``), and the rest relative to
it through ``/proc/self/fd/N``, for the calls that take no directory descriptor
(xattrs, ``shutil``'s copies, tarfile). A short path is used as it is.

Symlinks on the way are followed as the kernel would follow them in the full path: the
callers name directories they walked themselves (never through a symlink).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator

__all__ = ["LIMIT", "NAME_MAX", "make_dirs", "remove_path", "short"]

# What a path may take and still be handed to the kernel (PATH_MAX with its NUL, and
# room for "/proc/self/fd/NNNNNNNNNN/").
LIMIT = 4095
NAME_MAX = 255
_PIECE = 3500


def _split(path: str, limit: int) -> tuple[str, str]:
    """``path`` cut at a ``/`` so that the head is at most ``limit`` bytes long."""
    cut = os.fsencode(path)[:limit].rfind(b"/")
    if cut <= 0:
        raise OSError(36, "File name too long", path)  # ENAMETOOLONG: a name past NAME_MAX
    head = os.fsdecode(os.fsencode(path)[:cut])
    return head, path[len(head):].lstrip("/")


@contextlib.contextmanager
def short(path: str | os.PathLike[str], room: int = 0) -> Iterator[str]:
    """A name of ``path`` (absolute) that the kernel takes, valid inside the block, with
    ``room`` bytes to spare for names joined to it (NAME_MAX for a directory's entries)."""
    text = os.fspath(path)
    if len(os.fsencode(text)) + room <= LIMIT or not os.path.isdir("/proc/self/fd"):
        yield text
        return
    fd = -1
    rest = text
    try:
        while len(os.fsencode(rest)) > _PIECE:
            head, rest = _split(rest, _PIECE)
            opened = os.open(head or "/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                             dir_fd=None if fd < 0 else fd)
            if fd >= 0:
                os.close(fd)
            fd = opened
        yield f"/proc/self/fd/{fd}/{rest}"
    finally:
        if fd >= 0:
            os.close(fd)


def make_dirs(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, every directory made 0755 whatever the umask
    (makedirs gives the ones on the way the umask's mode): parents an archive or a layer
    does not list get the same mode on every machine, as BuildKit gives them."""
    try:
        with short(path) as at:
            if os.path.isdir(at):
                return
    except FileNotFoundError:
        pass  # a directory on the way is missing too: made below
    head = os.path.dirname(path)
    if head and head != path:
        make_dirs(head)
    with short(path) as at:
        os.mkdir(at)
        os.chmod(at, 0o755)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove whatever is at ``path`` (a directory recursively), never following symlinks
    (nor those on its way: the caller resolved it); nothing there is no error."""
    try:
        with short(path) as at:
            if stat.S_ISDIR(os.lstat(at).st_mode):
                shutil.rmtree(at)
            else:
                os.unlink(at)
    except FileNotFoundError:
        return
