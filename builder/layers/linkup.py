"""Hard links to a lower layer's file: the file copied up into the layer being applied.

A layer may hard-link a name to a file that only a layer below it holds (the image spec's
layer.md does not forbid it, and an image made by a tool that links against the whole
filesystem has such links). Docker's vfs and overlay2 drivers and containerd accept it:
the link joins the lower file's copy. An extracted layer (an overlay lower directory of
its own) has no such file, so it is copied up first, as overlayfs copies a lower file up
before it links it: content, owner, mode, times and xattrs, and the directories on its
way, which keep the lower directories' mode, owner and times. The link is then made to
the copy, so both names are one file in the layer, as they are in Docker's.

Nothing is followed out of the layer's root: every directory on the way is looked at
with lstat (a symlink there, or a file, means the target is not found), and the lower
file is found by the caller's ``lower`` lookup, which never leaves the lower layers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from collections.abc import Callable

__all__ = ["LowerLookup", "copy_up", "dir_info"]

# path relative to the rootfs ("a/b") -> (its path in a lower layer, its lstat) as the
# lower layers together show it (whiteouts and opaque directories applied), or None
LowerLookup = Callable[[str], "tuple[str, os.stat_result] | None"]
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


def copy_up(root: str, parts: list[str], lower: LowerLookup, same_owner: bool
            ) -> tuple[str, list[tuple[str, os.stat_result]]] | None:
    """Copy the file the lower layers show at ``parts`` into ``root``.

    Returns its path in ``root`` and the directories made on its way (each with the
    lstat of the lower directory it copies up: its metadata is set once the layer is
    applied); None when the lower layers hold no such file (nothing, a directory, a
    whiteout) or a directory on its way in ``root`` is not one."""
    found = lower("/".join(parts))
    if found is None or stat.S_ISDIR(found[1].st_mode):
        return None
    made: list[tuple[str, os.stat_result]] = []
    path = root
    for i, part in enumerate(parts[:-1]):
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
            continue
        except FileNotFoundError:
            pass
        above = lower("/".join(parts[:i + 1]))
        if above is None or not stat.S_ISDIR(above[1].st_mode):
            return None
        os.mkdir(path, 0o700)
        made.append((path, above[1]))
    src, st = found
    dest = os.path.join(path, parts[-1])
    if stat.S_ISREG(st.st_mode):
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with open(fd, "wb") as out, open(src, "rb") as data:
            shutil.copyfileobj(data, out, 1 << 20)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    else:  # a fifo or a device node (as root)
        os.mknod(dest, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
    for name in os.listxattr(src, follow_symlinks=False):
        if not name.startswith(_OVERLAY_XATTRS):
            with contextlib.suppress(OSError):  # as where the layer's own are refused
                os.setxattr(dest, name, os.getxattr(src, name, follow_symlinks=False),
                            follow_symlinks=False)
    if same_owner:
        os.chown(dest, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dest, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return dest, made


def dir_info(name: str, st: os.stat_result) -> tarfile.TarInfo:
    """A directory entry with the metadata ``st`` (to set as a layer's own entries')."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    seconds, ns = divmod(st.st_mtime_ns, 1_000_000_000)
    info.mtime = seconds
    info.pax_headers = {"mtime": f"{seconds}.{ns:09d}"}
    return info
