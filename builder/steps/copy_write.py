"""Writing a COPY's (or ADD's) items into the step's fresh upper directory: files,
links, directories and unpacked archives, with BuildKit's owners, modes, times and hard
links within a source; what is copied from a stage or an image keeps its xattrs
(``security.capability`` a ``setcap`` gave, ``user.*``), set last, as BuildKit's copy
sets them (a chown would drop a file capability).

An archive is unpacked as Docker's untar (BuildKit's) unpacks it, chrooted at the
destination: a hard link in it may join a file the stage already has there (copied up
into the layer with it, as overlayfs would; ``builder.layers.linkup``), and a link to
nothing, or to a directory, fails naming the entry, as BuildKit fails."""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..context import AnyStat, ContextError, DiskPath
from ..layers.errors import LayerFormatError, LinkToDirectory, MissingLinkTarget
from ..layers.linkup import LowerLookup, link_target_parts
from ..layers.scan import read_xattrs
from ..sandbox.rootfs import find_in_lowers
from .archives import open_archive
from .chmod import ModeChange
from .copyup import DirLookup, forget_dirs, make_parents

__all__ = ["CopyItem", "write_items"]


@dataclass(frozen=True, slots=True)
class CopyItem:
    """One path to write: ``dest`` (relative to /), from ``path`` (None with ``st``
    None: the directory a directory's contents are copied into), ``archive`` to unpack
    at ``dest``; ``source`` numbers the source (or wildcard match) it comes from;
    ``keep_owner``: without ``--chown`` the copy keeps ``st``'s owner (a stage's or an
    image's file, as BuildKit; the context's are root's)."""

    dest: str
    path: DiskPath | None
    st: AnyStat | None
    archive: bool = False
    data: bytes | None = None
    source: int = 0
    keep_owner: bool = False


def write_items(upper: Path, items: list[CopyItem], lookup: DirLookup,
                owner: tuple[int, int] | None, chmod: ModeChange | None,
                stage: Callable[[], Sequence[Path]] | None = None) -> None:
    """Write ``items`` into ``upper``. ``stage`` returns the stage's extracted layers
    (top first), where an archive's hard link finds a file the stage has at the
    destination; None (``--link``): only the archive's own files can be linked to."""
    # BuildKit copies each source (each wildcard match) on its own, keeping the hard
    # links within it: (source, st_dev, st_ino) -> the first copy written.
    linked: dict[tuple[int, int, int], Path] = {}
    # A directory gets its source's mtime once what is copied into it is written (that
    # changes it), before the next source is copied.
    dir_times: list[tuple[Path, int]] = []
    made: set[str] = set()  # directories of the upper dir known to be there
    source = 0
    for it in items:
        if it.source != source:
            _set_dir_times(dir_times)
            source = it.source
        target = upper / it.dest
        make_parents(upper, posixpath.dirname(it.dest), lookup, owner, made)
        if it.archive:
            assert it.path is not None
            make_parents(upper, it.dest, lookup, owner, made)
            from ..layers.extract import apply_layer

            # --chown owns every unpacked entry, as BuildKit 0.23 and later (earlier ones
            # kept the archive's owners)
            try:
                with open_archive(Path(it.path)) as src:
                    apply_layer(src, target, owner=owner, untar=True,
                                lower=None if stage is None else _stage_files(stage, it.dest))
            except (MissingLinkTarget, LinkToDirectory) as exc:
                raise LayerFormatError(_link_refused(exc, it, stage is None)) from exc
            made.clear()  # it may replace directories, or copy the stage's up
            continue
        if it.data is not None:  # a heredoc file: 0644 (or --chmod), root or --chown
            target.write_bytes(it.data)
            os.chown(target, *(owner or (0, 0)))
            os.chmod(target, chmod.apply(0o644, False) if chmod is not None else 0o644)
            continue
        if it.path is None and it.st is None:
            # The destination of a directory's contents, as BuildKit makes it: an existing
            # directory keeps its mode and owner; a new one is 0755, --chown'ed, and
            # --chmod applies only to what is copied into it.
            make_parents(upper, it.dest, lookup, owner, made)
            continue
        st = it.st
        ids = owner or ((st.st_uid, st.st_gid) if it.keep_owner and st is not None else (0, 0))
        if os.path.lexists(target) and not (target.is_dir() and (st is None or stat.S_ISDIR(st.st_mode))):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
            forget_dirs(made, it.dest)
        if st is None or stat.S_ISDIR(st.st_mode):
            target.mkdir(exist_ok=True)
            made.add(it.dest.strip("/"))
            mode = stat.S_IMODE(st.st_mode) if st is not None else 0o755
        elif stat.S_ISLNK(st.st_mode):
            assert it.path is not None
            os.symlink(os.readlink(it.path), target)
            os.lchown(target, *ids)
            _copy_xattrs(it, target)
            os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)
            continue
        elif stat.S_ISREG(st.st_mode):
            assert it.path is not None
            inode = (it.source, st.st_dev, st.st_ino)
            if st.st_nlink > 1 and inode in linked:
                os.link(linked[inode], target)
                continue
            if st.st_nlink > 1:
                linked[inode] = target
            mode = stat.S_IMODE(st.st_mode)
            _copy_file(it.path, target, ids, chmod.apply(mode, False) if chmod else mode,
                       st, read_xattrs(os.fspath(it.path)) if it.keep_owner else ())
            continue
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            _make_node(it, target, st, ids, chmod)
            continue
        else:
            continue  # a socket: a layer cannot hold one
        # a directory: its time is set once what is copied into it is written
        os.chown(target, *ids)
        os.chmod(target, chmod.apply(mode, True) if chmod is not None else mode)
        _copy_xattrs(it, target)
        if st is not None:
            dir_times.append((target, st.st_mtime_ns))
    _set_dir_times(dir_times)


def _stage_files(stage: Callable[[], Sequence[Path]], dest: str) -> LowerLookup:
    """What the stage shows at a path of an archive unpacked at ``dest``."""
    def lower(rel: str) -> tuple[str, os.stat_result] | None:
        found = find_in_lowers(stage(), f"{dest}/{rel}" if dest else rel)
        return None if found is None else (str(found[1]), found[2])
    return lower


def _link_refused(exc: MissingLinkTarget | LinkToDirectory, it: CopyItem, linked: bool) -> str:
    """Why an archive's hard link cannot be made, and what to do about it (``linked``:
    ``--link``, which unpacks onto an empty layer, as BuildKit does)."""
    assert it.path is not None
    where = "/" + "/".join([*it.dest.split("/"), *link_target_parts(
        exc.target, exc.name, untar=True)]).strip("/")
    entry = (f"{posixpath.basename(os.fspath(it.path))}: entry {exc.name!r} is a hard link "
             f"to {exc.target!r}")
    if isinstance(exc, LinkToDirectory):
        return (f"{entry}, which is a directory ({where}), and no file system hard-links a "
                "directory (BuildKit fails too: 'operation not permitted'); make the entry "
                "a symlink, or link it to a file")
    if linked:
        return (f"{entry}, which is not in the archive before it, and ADD --link unpacks onto "
                "an empty layer, where the image's files are not there to link to (BuildKit "
                "fails too); put that file in the archive before the link, or drop --link")
    return (f"{entry}, which is neither in the archive before it nor in the image at {where} "
            "(a link target is looked up inside the destination, as BuildKit does, which "
            "fails too: 'no such file or directory'); put that file in the archive before "
            f"the link, or create {where} in an earlier step")


def _make_node(it: CopyItem, target: Path, st: AnyStat, ids: tuple[int, int],
               chmod: ModeChange | None) -> None:
    """A FIFO or device node as its copy, with owner, mode, xattrs and mtime, as
    BuildKit's copy makes one (fsutil since 2022; earlier ones dropped FIFOs and wrote
    devices as empty files). Root of a user namespace cannot make a device node: left
    out, as a flattened stage leaves it out there."""
    assert it.path is not None
    rdev = os.lstat(it.path).st_rdev  # a context's walk keeps no device numbers
    try:
        os.mknod(target, stat.S_IFMT(st.st_mode) | 0o600, rdev)
    except PermissionError:
        if stat.S_ISFIFO(st.st_mode):
            raise
        return
    mode = stat.S_IMODE(st.st_mode)
    os.chown(target, *ids, follow_symlinks=False)
    os.chmod(target, chmod.apply(mode, False) if chmod is not None else mode)
    _copy_xattrs(it, target)
    os.utime(target, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_xattrs(it: CopyItem, target: Path) -> None:
    """A stage's (or an image's) entry's xattrs onto its copy (not the context's)."""
    if it.keep_owner and it.path is not None:
        for name, value in read_xattrs(os.fspath(it.path)):
            _set_xattr(target, name, value)


def _set_xattr(target: Path | int, name: str, value: bytes) -> None:
    try:
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP):  # user.* on a symlink, a namespace
            raise                                             # the filesystem lacks


def _copy_file(src: DiskPath, dst: Path, ids: tuple[int, int], mode: int, st: AnyStat,
               xattrs: tuple[tuple[str, bytes], ...] = ()) -> None:
    """``src``'s bytes as the new file ``dst``, with owner, mode, ``xattrs`` and the mtime
    of ``st``: set through its descriptor, so that each file costs two opens and no
    further path lookups. ContextError if ``src`` is no longer as ``st`` (the lstat its
    content key was made with) once copied: the layer would not hold what the build cache
    records it holds."""
    mtime_ns = st.st_mtime_ns
    try:
        fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContextError(f"{os.fspath(src)!r} was removed while the build copied it; rerun "
                           "the build once nothing removes it") from None
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            while os.sendfile(fout, fin, None, 1 << 30) > 0:
                pass
            now = os.fstat(fin)
            if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
                    st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                raise ContextError(
                    f"{os.fspath(src)!r} changed while the build copied it (it was written "
                    "to after the build cache read it); rerun the build once nothing writes "
                    "to it, or leave it out with .dockerignore")
            os.fchown(fout, *ids)
            os.fchmod(fout, mode)  # after the owner: a chown clears setuid and setgid
            for name, value in xattrs:  # after both: a chown clears security.capability
                _set_xattr(fout, name, value)
            os.utime(fout, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fout)
    finally:
        os.close(fin)


def _set_dir_times(dirs: list[tuple[Path, int]]) -> None:
    for target, mtime_ns in dirs:
        os.utime(target, ns=(mtime_ns, mtime_ns))
    dirs.clear()
