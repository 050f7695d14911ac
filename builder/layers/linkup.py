"""Hard link entries: the file a link joins, found in the layer being applied or copied up
from the layers below it.

A layer may hard-link a name to a file that only a layer below it holds (the image spec's
layer.md does not forbid it, and an image made by a tool that links against the whole
filesystem has such links). Docker's vfs and overlay2 drivers and containerd accept it:
the link joins the lower file's copy. An extracted layer (an overlay lower directory of
its own) has no such file, so it is copied up first, as overlayfs copies a lower file up
before it links it: content, owner, mode, times and xattrs, and the directories on its
way, which keep the lower directories' mode, owner and times. The link is then made to
the copy, so both names are one file in the layer, as they are in Docker's.

``ADD`` of a local archive is the same operation with the stage's files under the
destination as the lower layers: Docker's untar (BuildKit's and the classic builder's)
runs chrooted at the destination and links to whatever is there, the stage's files
included, so ``ADD links.tar /dst/`` whose ``b`` links to ``a`` makes ``/dst/b`` one file
with the stage's ``/dst/a``. Its link targets are read as that chrooted process reads
them (:func:`link_target_parts`): a name cleaned lexically from the archive's root, so
``../x`` and ``/x`` both name ``<dest>/x``.

The target is looked up as the layer over its lowers shows it (:func:`link_source`):
symlinks on the way are followed inside the root (chroot semantics, :mod:`.rootwalk`; the
final one is linked itself, as link(2) does), what the layer holds wins over the lowers,
and what its whiteouts hide, or a file of its own over a lower directory, is not seen.
Every directory on the way is looked at with lstat, the lower files by the caller's
``lower`` lookup, which never leaves the lower layers: nothing outside the root is read
or written.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
from collections.abc import Callable

from .errors import LinkToDirectory, MissingLinkTarget, UnsafeLayerEntry
from .longpath import short
from .pathres import clean_name
from .rootwalk import SymlinkLoop, walk_in_root

__all__ = ["LowerLookup", "copy_up", "link_source", "link_target_parts", "restore_dir",
           "walk_merged"]

# path relative to the rootfs ("a/b") -> (its path in a lower layer, its lstat) as the
# lower layers together show it (whiteouts and opaque directories applied), or None
LowerLookup = Callable[[str], "tuple[str, os.stat_result] | None"]
_OVERLAY_XATTRS = ("trusted.overlay.", "user.overlay.")


def link_target_parts(target: str, entry: str, *, untar: bool) -> list[str]:
    """The components of the hard link target ``target`` of the entry ``entry``.

    A layer's (:func:`.pathres.clean_name`): ``..`` is refused (UnsafeLayerEntry). An ADD
    archive's (``untar``): as Docker's untar, chrooted at the destination, joins it to
    ``/`` (Go's ``filepath.Join``, lexical): ``..`` stops at the archive's root, so
    ``../x`` is ``x``. A NUL byte is refused in both."""
    if not untar:
        return clean_name(target, entry=entry)
    if "\0" in target:
        raise UnsafeLayerEntry(entry, f"NUL byte in the hard link target {target!r}")
    return [p for p in posixpath.normpath("/" + target).split("/") if p]


def link_source(root: str, parts: list[str], *, name: str, target: str,
                lower: LowerLookup | None, hidden: Callable[[list[str]], bool],
                same_owner: bool) -> tuple[str, os.stat_result, list[tuple[str, os.stat_result]]]:
    """The file the hard link entry ``name`` (to ``target``, whose components are
    ``parts``) joins: its path in ``root``, its lstat, and the directories made in
    ``root`` to copy it up there (each with the lstat of the lower directory it copies:
    see :func:`restore_dir`).

    ``root`` holds what the layer wrote so far; ``lower`` (None: nothing below) what the
    layers below show; ``hidden(components)``: whether the layer's whiteouts hide that
    path of the lowers. A file only the lowers hold is copied up (:func:`copy_up`).
    Raises LinkToDirectory for a directory, MissingLinkTarget where there is nothing (or
    a directory on the way is not one), UnsafeLayerEntry for a symlink loop."""

    upper_stat, below, resolved = _walk(root, parts, name=name, lower=lower, hidden=hidden,
                                        follow_final=False)
    st = upper_stat(resolved)
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise LinkToDirectory(name, target)
        return os.path.join(root, *resolved), st, []
    found = below(resolved)
    if found is not None and stat.S_ISDIR(found[1].st_mode):
        raise LinkToDirectory(name, target)
    copied = None if found is None or lower is None else copy_up(root, resolved, lower, same_owner)
    if copied is None:
        raise MissingLinkTarget(name, target, lower is not None)
    with short(copied[0]) as at:
        return copied[0], os.lstat(at), copied[1]


def walk_merged(root: str, parts: list[str], *, name: str, lower: LowerLookup | None,
                hidden: Callable[[list[str]], bool]) -> list[str]:
    """The components ``parts`` lead to in the layer ``root`` over its ``lower`` layers
    (as :func:`link_source` sees them), every symlink followed inside the root, the final
    one too. Raises UnsafeLayerEntry (naming ``name``) for a symlink loop."""
    return _walk(root, parts, name=name, lower=lower, hidden=hidden, follow_final=True)[2]


def _walk(root: str, parts: list[str], *, name: str, lower: LowerLookup | None,
          hidden: Callable[[list[str]], bool], follow_final: bool
          ) -> tuple[Callable[[list[str]], os.stat_result | None],
                     Callable[[list[str]], tuple[str, os.stat_result] | None], list[str]]:
    """``parts`` walked in the layer ``root`` over ``lower``: its lstat in the layer, what
    the lowers show at a path (None where the layer hides it), the components found."""

    def upper_stat(comps: list[str]) -> os.stat_result | None:
        try:
            with short(os.path.join(root, *comps)) as at:
                return os.lstat(at)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def below(comps: list[str]) -> tuple[str, os.stat_result] | None:
        if lower is None or hidden(comps):
            return None
        for i in range(1, len(comps)):  # a file of the layer's hides a lower directory
            st = upper_stat(comps[:i])
            if st is not None and not stat.S_ISDIR(st.st_mode):
                return None
        return lower("/".join(comps))

    def lstat(comps: list[str]) -> os.stat_result | None:
        st = upper_stat(comps)
        if st is None and (found := below(comps)) is not None:
            return found[1]
        return st

    def readlink(comps: list[str]) -> str:
        found = below(comps) if upper_stat(comps) is None else None
        with short(found[0] if found is not None else os.path.join(root, *comps)) as at:
            return os.readlink(at)

    try:
        resolved = walk_in_root(parts, lstat=lstat, readlink=readlink, follow_final=follow_final)
    except SymlinkLoop as exc:
        raise UnsafeLayerEntry(name, str(exc)) from None
    return upper_stat, below, resolved


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


def restore_dir(path: str, st: os.stat_result, same_owner: bool) -> None:
    """Give the directory ``path`` (made by :func:`copy_up`) the owner (with
    ``same_owner``), mode and mtime of the lower directory it copies, ``st``: once the
    layer is applied, since what is written into it changes its mtime."""
    if same_owner:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
