"""Flatten overlayfs-format lower directories into one plain directory (``rootfs=copy``).

Used where overlayfs cannot be mounted. Layers are applied bottom to top, with overlayfs
semantics: a 0/0 character device deletes what lies below it, a directory with the
``trusted.overlay.opaque=y`` xattr hides everything below it, an entry of a different type
replaces the one below. Owners, modes, times, xattrs, hard links (within a layer), device
nodes and fifos are kept.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

from ..layers.extract import remove_path
from ..layers.longpath import NAME_MAX, short
from ..layers.scan import walk
from .rootfs import is_opaque
from .whiteouts import is_whiteout

__all__ = ["flatten_lowers", "flatten_subtree", "pin_times"]


def flatten_lowers(lowers: Sequence[Path], dest: Path) -> None:
    """Write the union of ``lowers`` (top first) into the empty or new directory ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for layer in reversed(lowers):
        _apply(layer, dest, {})
        _copy_meta(layer, dest)


def pin_times(lowers: Sequence[Path], dest: Path, epoch: int, *, itself: bool = False) -> None:
    """Give every entry of the union of ``lowers`` in ``dest`` (written there by
    :func:`flatten_lowers`), and ``dest`` ``itself`` if asked (a platform's directory), the
    time ``epoch``, as BuildKit's ``local`` and ``tar`` exporters do with
    ``SOURCE_DATE_EPOCH``: the files are the same whichever machine, checkout or cache made
    them. What else ``dest`` holds keeps its times. Symbolic links are never followed (an
    image's ``/x -> /etc`` must not reach the host's files)."""
    ours = {rel for layer in lowers for rel, _, _ in walk(os.fspath(layer))}
    ns = epoch * 1_000_000_000
    if itself:
        os.utime(dest, ns=(ns, ns))
    for rel, path, _ in walk(os.fspath(dest)):  # (its paths may be long: longpath)
        if rel in ours:
            with short(path) as at:
                os.utime(at, ns=(ns, ns), follow_symlinks=False)


def flatten_subtree(lowers: Sequence[Path], dest: Path, within: str | Sequence[str]) -> bool:
    """Write only ``within`` (relative paths: each a directory or a regular file) of the
    union of ``lowers`` (top first), and the directories on their way, into the empty or
    new directory ``dest``: what a ``COPY --from`` of those paths reads, without copying
    the rest of the stage. False (nothing written) when some layer has anything but a
    directory or a whiteout on a way, or a symlink (or another kind) at its end (a symlink
    could lead out of it): flatten it all then."""
    paths = [within] if isinstance(within, str) else list(within)
    ways = [[p for p in path.split("/") if p not in ("", ".")] for path in paths]
    if not ways or any(not parts or ".." in parts for parts in ways):
        return False
    if not all(_only_directories_on(lowers, parts) for parts in ways):
        return False
    dest.mkdir(parents=True, exist_ok=True)
    for parts in ways:
        _write_way(lowers, dest, parts)
    return True


def _only_directories_on(lowers: Sequence[Path], parts: list[str]) -> bool:
    for layer in lowers:
        cur = layer
        for i, part in enumerate(parts):
            cur = cur / part
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                break
            if is_whiteout(cur, st):
                break
            if not (stat.S_ISDIR(st.st_mode) or (i == len(parts) - 1 and stat.S_ISREG(st.st_mode))):
                return False
    return True


def _write_way(lowers: Sequence[Path], dest: Path, parts: list[str]) -> None:
    for layer in reversed(lowers):
        src, dst = layer, dest
        for part in parts:
            src, dst = src / part, dst / part
            try:
                st = os.lstat(src)
            except (FileNotFoundError, NotADirectoryError):
                break
            if is_whiteout(src, st):  # nothing below it from lower layers
                remove_path(dst)
                break
            if stat.S_ISREG(st.st_mode):  # the file named (_only_directories_on said so)
                _entry(src, dst, st, {})
                break
            if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                remove_path(dst)  # a file of a lower layer, now a directory
            if is_opaque(src) and dst.is_dir():
                shutil.rmtree(dst)
            dst.mkdir(exist_ok=True)
            _copy_meta(src, dst, st)
        else:
            _apply(src, dst, {})
            _copy_meta(src, dst)


def _apply(src_dir: Path, dst_dir: Path, links: dict[tuple[int, int], Path]) -> None:
    """``src_dir`` onto ``dst_dir``: both may be longer than the kernel takes (an image's
    deep path below the storage's), so each level names them through longpath.short."""
    with short(src_dir, NAME_MAX + 1) as src_at, short(dst_dir, NAME_MAX + 1) as dst_at:
        with os.scandir(src_at) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            src, dst = Path(src_at, entry.name), Path(dst_at, entry.name)
            st = entry.stat(follow_symlinks=False)
            if is_whiteout(src, st):
                remove_path(dst)
                continue
            if stat.S_ISDIR(st.st_mode):
                if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                    remove_path(dst)
                elif is_opaque(src) and dst.is_dir():
                    shutil.rmtree(dst)
                if not dst.is_dir():
                    dst.mkdir()
                _apply(src_dir / entry.name, dst_dir / entry.name, links)
                _copy_meta(src, dst)
                continue
            _entry(src, dst, st, links, dst_dir / entry.name)


def _entry(src: Path, dst: Path, st: os.stat_result, links: dict[tuple[int, int], Path],
           named: Path | None = None) -> None:
    """Put the non-directory ``src`` at ``dst`` (whose full name is ``named``) in place of
    whatever is there (a hard link to its first copy when ``links`` has one)."""
    remove_path(dst)
    key = (st.st_dev, st.st_ino)
    if st.st_nlink > 1 and key in links:
        with short(links[key]) as first:
            os.link(first, dst)
        return
    if stat.S_ISREG(st.st_mode):
        shutil.copyfile(src, dst, follow_symlinks=False)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISFIFO(st.st_mode):
        os.mknod(dst, st.st_mode, st.st_rdev)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        try:
            os.mknod(dst, st.st_mode, st.st_rdev)
        except PermissionError:
            return  # root of a user namespace cannot make devices: left out
    else:
        return  # sockets do not belong in an image
    if st.st_nlink > 1:
        links[key] = named or dst
    _copy_meta(src, dst, st)


def _copy_meta(src: Path, dst: Path, st: os.stat_result | None = None) -> None:
    st = st or os.lstat(src)
    link = stat.S_ISLNK(st.st_mode)
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        names = []
    for name in names:
        if name.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError:
            pass  # a filesystem without that xattr namespace: the content still counts
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
