"""Safe layer extraction: apply an untrusted layer blob to a rootfs directory.

The blob may be a plain tar, gzip (one or many members) or zstd (one or many frames);
the kind is detected from its first bytes, not from a media type. Whiteouts follow the
OCI image spec's layer.md: ``.wh.<name>`` removes ``<name>`` from the lower layers,
``.wh..wh..opq`` hides everything the lower layers had in its directory. Neither hides
what this same layer creates, whatever the entry order (paths written by the layer are
remembered, as containerd does). Other ``.wh..wh.*`` names (aufs bookkeeping) are skipped.

Safety: every entry name is cleaned (:func:`.pathres.clean_name`: a leading ``/`` is
dropped, ``..`` is refused; an ADD archive's ``..`` stops at the root instead:
:mod:`.untarname`), its parent resolved inside the rootfs with symlinks scoped
to it (:func:`.pathres.resolve_in_root`), and the final component is never followed: an
existing symlink there is replaced, not written through. Hard link targets resolve the
same way, over the lower layers when given (one only they hold is copied up first:
:mod:`.linkup`). So no entry,
whatever symlinks earlier entries or lower layers planted, can create, modify or remove
anything outside the rootfs. Symlink *targets* are stored verbatim (they are only
followed later, inside the container). A directory entry over an existing symlink
replaces the symlink with a directory, as containerd and Docker do.

Ownership and device nodes need root: by default (``same_owner=None``) owners are set and
devices created when running as root; otherwise they are skipped and listed in
:attr:`ApplyReport.skipped`. As root of a user namespace, device nodes are skipped (the
kernel refuses them) and an owner the namespace does not map is an error. Directory
modes and mtimes are applied last, deepest first, so a read-only directory can still be
filled and its mtime is not disturbed afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from cas import Digest
from cas.errors import StorageFull
from cas.frames import GZIP_MAGIC, ZSTD_MAGIC

from .changeset import OPAQUE_WHITEOUT, WHITEOUT_PREFIX, whiteout_mark
from .errors import LayerFormatError, UnsafeLayerEntry
from .inflate import Gunzip, InflateError
from .linkup import LowerLookup, link_source, link_target_parts, restore_dir
from .longpath import NAME_MAX, make_dirs, remove_path, short
from .pathres import clean_name, resolve_in_root
from .tarread import Digesting, entry_mtime_ns, name_too_long, open_tar, tar_members
from .untarname import untar_name, untar_parent

__all__ = ["ApplyReport", "apply_layer", "open_layer", "remove_path", "whiteout_mark"]

_READ = 1 << 20
_XATTR_KEY = "SCHILY.xattr."
# What a layer whose entries contradict each other or the rootfs causes (a name below a
# file, ...), as opposed to the machine's own trouble (ENOSPC, EIO), which propagates.
_LAYOUT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT,
                            errno.ELOOP, errno.EINVAL, errno.ENAMETOOLONG, errno.ENOTEMPTY})
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_INFLATED_BLOCK = 1 << 20
# Extraction stops where the file system it writes to would keep less than 1/20 of its
# size (at most 1 GiB) free, looked at every _CHECK_EVERY bytes written: a layer that
# expands to more than the disk holds (a gzip or zstd bomb) fails before the disk is full.
_KEEP_FREE_SHARE = 20
_KEEP_FREE_MAX = 1 << 30
_CHECK_EVERY = 16 << 20
# How deep an entry may lie in the rootfs (PATH_MAX allows ~2,000 levels; Python's
# recursive tree walks, as shutil.rmtree's in 3.11, stop near 1,000).
_MAX_DEPTH = 512
# What an id can be (uid_t; (uid_t)-1 means "unchanged" to chown).
_MAX_ID = (1 << 32) - 2


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What :func:`apply_layer` did: counts, and what it could not do (and why)."""

    entries: int
    whiteouts: int
    skipped: tuple[str, ...]


def open_layer(src: IO[bytes]) -> IO[bytes]:
    """A readable stream of the tar inside ``src`` (plain, gzip or zstd, by magic)."""
    buffered = src if isinstance(src, io.BufferedReader) else io.BufferedReader(
        cast("io.RawIOBase", src))
    head = buffered.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):  # every member, read ahead in large blocks
        return cast("IO[bytes]", io.BufferedReader(
            cast("io.RawIOBase", Gunzip(fileobj=buffered, mode="rb")), _INFLATED_BLOCK))
    if head.startswith(ZSTD_MAGIC):
        return cast("IO[bytes]", zstandard.ZstdDecompressor().stream_reader(
            buffered, read_across_frames=True))
    return buffered


class _Applier:
    def __init__(self, root: str, same_owner: bool, owner: tuple[int, int] | None = None,
                 lower: LowerLookup | None = None, untar: bool = False) -> None:
        self.root = root
        self.same_owner = same_owner
        self.owner = owner
        self.lower = lower
        self.untar = untar
        self.hidden: set[str] = set()  # what this layer's whiteouts hide of the lowers
        self.is_root = os.geteuid() == 0
        self.written: set[str] = set()
        self.written_parents: set[str] = set()
        self.dirs: list[tuple[str, int, tarfile.TarInfo]] = []
        # directories made to copy a hard link's target up: (path, inode, the lower's lstat)
        self.copied_dirs: list[tuple[str, int, os.stat_result]] = []
        self.skipped: list[str] = []
        self.entries = 0
        self.whiteouts = 0
        self._unchecked = 0  # bytes written since the free space was last looked at
        # Parent components -> the directory they resolved to: most entries share their
        # parent with the entry before. Emptied whenever a directory or a symlink is
        # removed or replaced (or a whiteout removes anything): only that can change
        # where a name resolves; a new entry cannot.
        self._parents: dict[tuple[str, ...], str] = {}

    # -- paths -------------------------------------------------------------------------
    def _parent_dir(self, name: str, parts: list[str]) -> str:
        key = tuple(parts[:-1])
        parent = self._parents.get(key)
        if parent is not None:
            return parent
        parent = self._resolve(parts[:-1], name)
        depth = parent.count(os.sep) - self.root.rstrip(os.sep).count(os.sep) + 1
        if depth > _MAX_DEPTH:  # where it lands: symlinks in the name can add to it
            shown = name if len(name) <= 200 else name[:200] + "..."
            raise LayerFormatError(
                f"layer entry {shown!r} lies {depth} directories deep in the rootfs, "
                f"more than the {_MAX_DEPTH} pybuild handles (its tree walks would fail); "
                "no image needs that many: the layer is malformed or hostile")
        try:
            make_dirs(parent)
        except (FileExistsError, NotADirectoryError) as exc:
            raise LayerFormatError(
                f"layer entry {name!r}: a parent is not a directory in the rootfs "
                f"({exc.strerror}); the layer does not fit on its lower layers"
            ) from exc
        self._parents[key] = parent
        return parent

    def _resolve(self, comps: list[str], name: str) -> str:
        """Where the directory ``comps`` is: an ADD archive's through the stage's files
        too, as Docker's untar sees them (:func:`.untarname.untar_parent`)."""
        if not self.untar or self.lower is None:
            return resolve_in_root(self.root, comps, follow_final=True, name=name)
        path, made = untar_parent(self.root, comps, name=name, lower=self.lower,
                                  hidden=self._hidden)
        self.copied_dirs.extend((d, os.lstat(d).st_ino, lower_st) for d, lower_st in made)
        return path

    def _hidden(self, comps: list[str]) -> bool:
        """Whether this layer's whiteouts hide the lowers' ``comps``."""
        return any(os.path.join(self.root, *comps[:i]) in self.hidden
                   for i in range(1, len(comps) + 1))

    def _replacing(self, existing: os.stat_result | None) -> None:
        """An entry is about to take the place of ``existing``."""
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            self._parents.clear()

    def _mark(self, path: str) -> None:
        self.written.add(path)
        parent = os.path.dirname(path)
        while parent not in self.written_parents and len(parent) > len(self.root):
            self.written_parents.add(parent)
            parent = os.path.dirname(parent)

    # -- whiteouts ---------------------------------------------------------------------
    def _clear_lower(self, directory: str) -> None:
        """Opaque whiteout: remove what lower layers left in ``directory``."""
        try:
            with short(directory, NAME_MAX + 1) as at:
                children = [(c.name, c.is_dir(follow_symlinks=False)) for c in os.scandir(at)]
        except (FileNotFoundError, NotADirectoryError):
            return
        for name, is_dir in children:
            child = os.path.join(directory, name)
            if child in self.written or child in self.written_parents:
                if is_dir:
                    self._clear_lower(child)
            else:
                remove_path(child)

    def whiteout(self, name: str, parts: list[str]) -> None:
        base = parts[-1]
        self.whiteouts += 1
        self._parents.clear()
        parent = resolve_in_root(self.root, parts[:-1], follow_final=True, name=name)
        self.hidden.add(parent if base == OPAQUE_WHITEOUT else os.path.join(parent, base[len(WHITEOUT_PREFIX):]))
        if base == OPAQUE_WHITEOUT:
            self._clear_lower(parent)
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            self.skipped.append(f"{name}: aufs metadata, ignored")
            return
        target_name = base[len(WHITEOUT_PREFIX):]
        if target_name in ("", ".", ".."):
            raise UnsafeLayerEntry(name, "whiteout of an empty, '.' or '..' name")
        target = os.path.join(parent, target_name)
        if target not in self.written and target not in self.written_parents:
            remove_path(target)

    # -- entries -----------------------------------------------------------------------
    def entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        parent = self._parent_dir(member.name, parts)
        self.entries += 1
        with short(parent, NAME_MAX + 1) as at:  # below a long rootfs path: longpath
            self._entry(tf, member, parts, os.path.join(parent, parts[-1]),
                        os.path.join(at, parts[-1]))

    def _entry(self, tf: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str],
               named: str, path: str) -> None:
        """The entry ``member`` at ``path``, a short name of ``named``."""
        name = member.name
        existing = None
        try:
            existing = os.lstat(path)
        except FileNotFoundError:
            pass
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                self._replacing(existing)
                remove_path(path)
                os.mkdir(path, 0o700)
            self.dirs.append((named, os.lstat(path).st_ino, member))
            self._mark(named)
            return
        if member.islnk():
            src, src_st = self._link_source(member)
            if existing is None or (existing.st_ino, existing.st_dev) != (src_st.st_ino, src_st.st_dev):
                self._replacing(existing)
                remove_path(path)
                with short(src) as at:
                    os.link(at, path, follow_symlinks=False)
            if self.untar:  # Docker's untar gives the file the link entry's metadata
                self._metadata(path, member, is_link=stat.S_ISLNK(src_st.st_mode))
            self._mark(named)
            return
        self._replacing(existing)
        remove_path(path)
        if member.type in _FILE_TYPES:
            self._write_file(tf, member, path)
        elif member.issym():
            if "\0" in member.linkname:
                raise UnsafeLayerEntry(name, f"NUL byte in the symlink target {member.linkname!r}")
            os.symlink(member.linkname, path)
        elif member.ischr() or member.isblk() or member.isfifo():
            if (member.ischr() or member.isblk()) and not self.is_root:
                self.skipped.append(f"{name}: device node needs root, not created")
                return
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            try:
                os.mknod(path, 0o600 | kind, os.makedev(member.devmajor, member.devminor))
            except PermissionError:
                if kind == stat.S_IFIFO:
                    raise
                # Root of a user namespace has no CAP_MKNOD outside it (containerd
                # skips device nodes there too).
                self.skipped.append(f"{name}: device node not permitted here (a user "
                                    "namespace), not created")
                return
        else:
            raise LayerFormatError(
                f"layer entry {name!r} has tar type {member.type!r}, which a layer cannot "
                "use (regular, link, symlink, char, block, dir and fifo are allowed)")
        self._metadata(path, member, is_link=member.issym())
        self._mark(named)

    def _link_source(self, member: tarfile.TarInfo) -> tuple[str, os.stat_result]:
        """The file the hard link entry ``member`` joins (:func:`.linkup.link_source`)."""
        parts = link_target_parts(member.linkname, member.name, untar=self.untar)
        path, st, made = link_source(self.root, parts, name=member.name,
                                     target=member.linkname, lower=self.lower, hidden=self._hidden,
                                     same_owner=self.same_owner)
        self.copied_dirs.extend((d, os.lstat(d).st_ino, lower_st) for d, lower_st in made)
        return path, st

    def _write_file(self, tf: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if member.size:
                data = tf.extractfile(member)
                assert data is not None
                if member.sparse is not None:
                    self._write_sparse(data, member, fd)
                    return
                while chunk := data.read(_READ):
                    self._room(fd, member.name, len(chunk))
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def _write_sparse(self, data: IO[bytes], member: tarfile.TarInfo, fd: int) -> None:
        """A GNU sparse entry: only its data blocks are read and written, at their
        offsets, and its holes stay holes (as Go's tar reader, Docker's, leaves them),
        instead of zeros written out: a header of a few bytes can claim terabytes of
        holes. ``data`` reads the entry with its holes; seeking its raw reader skips them
        (the buffered one cannot seek a stream)."""
        raw = cast("io.BufferedReader", data).raw
        end = 0
        for offset, size in cast("list[tuple[int, int]]", member.sparse):
            if offset < end or size < 0 or offset + size > member.size:
                raise LayerFormatError(
                    f"layer entry {member.name!r}: its sparse map has blocks out of order "
                    f"or past the file's size ({member.size}); the layer is malformed")
            raw.seek(offset, io.SEEK_SET)
            done = 0
            while done < size:
                chunk = raw.read(min(size - done, _READ))
                if not chunk:
                    raise LayerFormatError(f"layer entry {member.name!r}: its data ends "
                                           "before its sparse map does")
                self._room(fd, member.name, len(chunk))
                done += os.pwrite(fd, chunk, offset + done)
            end = offset + size
        try:
            os.ftruncate(fd, member.size)
        except (OSError, OverflowError) as exc:
            if isinstance(exc, OSError) and exc.errno not in (errno.EFBIG, errno.EINVAL):
                raise
            why = exc.strerror if isinstance(exc, OSError) else "past what off_t holds"
            raise LayerFormatError(
                f"layer entry {member.name!r} is a sparse file of {member.size} bytes, more "
                f"than a file here can hold ({why}); the layer is malformed") from exc

    def _room(self, fd: int, name: str, size: int) -> None:
        """Before ``size`` more bytes are written: refuse to go on when the file system
        would keep too little free (see _KEEP_FREE_SHARE)."""
        self._unchecked += size
        if self._unchecked < _CHECK_EVERY:
            return
        self._unchecked = 0
        fs = os.fstatvfs(fd)
        keep = min(fs.f_blocks * fs.f_frsize // _KEEP_FREE_SHARE, _KEEP_FREE_MAX)
        if fs.f_bavail * fs.f_frsize < keep:
            raise StorageFull(
                f"layer entry {name!r}", self.root,
                f"extraction stops where the file system would keep less than "
                f"{keep >> 20} MiB free (5 % of it, at most 1 GiB): the layer expands to "
                "more than the disk has room for (a layer this size, or a corrupt or "
                "hostile one that inflates without end)")

    def _metadata(self, path: str, member: tarfile.TarInfo, *, is_link: bool) -> None:
        if self.same_owner:
            uid, gid = self.owner or (member.uid, member.gid)
            if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
                raise LayerFormatError(
                    f"layer entry {member.name!r} is owned by {uid}:{gid}, which no file "
                    f"can be (ids run from 0 to {_MAX_ID}); the layer is malformed")
            try:
                os.chown(path, uid, gid, follow_symlinks=False)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                raise LayerFormatError(
                    f"layer entry {member.name!r} is owned by {member.uid}:{member.gid}, "
                    "an id this user namespace does not map: a non-root build maps the "
                    "user's subordinate ids (/etc/subuid, /etc/subgid); give the user a "
                    "range that covers it (usermod --add-subuids, --add-subgids) or build "
                    "as root") from exc
        if not is_link:
            os.chmod(path, member.mode & 0o7777)  # after chown, which clears setuid
        for key, value in sorted(member.pax_headers.items()):
            if key.startswith(_XATTR_KEY):
                xname = key[len(_XATTR_KEY):]
                try:
                    os.setxattr(path, xname, value.encode("utf-8", "surrogateescape"),
                                follow_symlinks=False)
                except OSError as exc:
                    self.skipped.append(f"{member.name}: xattr {xname} not set ({exc.strerror})")
        try:
            mtime_ns = entry_mtime_ns(member)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
        except (OverflowError, ValueError) as exc:  # inf, nan, past what time_t holds
            raise LayerFormatError(
                f"layer entry {member.name!r} has mtime {member.mtime!r}, which no file can "
                f"have ({exc}); the layer is malformed") from exc

    def finish(self) -> None:
        """Set the deferred directory metadata: the copied-up directories', then the
        layer's own (deepest first), which win. A later entry may have replaced a
        directory, or one of its parents by a symlink: the path is re-resolved inside the
        root and must still name the same directory, or it is left alone."""
        todo: list[tuple[str, int, tarfile.TarInfo | os.stat_result]] = [
            *self.copied_dirs, *reversed(self.dirs)]
        for path, ino, meta in todo:
            rel = os.path.relpath(path, self.root).split(os.sep)
            name = meta.name if isinstance(meta, tarfile.TarInfo) else path
            with contextlib.ExitStack() as held:
                try:
                    if resolve_in_root(self.root, rel, name=name) != path:
                        continue
                    at = held.enter_context(short(path))  # a long rootfs path: longpath
                    st = os.lstat(at)
                except (OSError, UnsafeLayerEntry):
                    continue
                if not (stat.S_ISDIR(st.st_mode) and st.st_ino == ino):
                    continue
                if isinstance(meta, tarfile.TarInfo):
                    self._metadata(at, meta, is_link=False)
                else:
                    restore_dir(at, meta, self.same_owner)


def apply_layer(src: BinaryIO | Path | str, rootfs: Path | str, *,
                same_owner: bool | None = None,
                marks: list[tuple[list[str], bool]] | None = None,
                owner: tuple[int, int] | None = None,
                diff_id: Digest | None = None,
                lower: LowerLookup | None = None,
                untar: bool = False) -> ApplyReport:
    """Apply the layer ``src`` (a path or a readable binary stream) on top of ``rootfs``.

    ``diff_id``, when given, is what the image config says the uncompressed stream's
    digest is: the stream is read to its end and a layer that is not that one is a
    LayerFormatError once applied (image-spec config.md; containerd and Docker refuse it
    too), so that the caller throws the rootfs away instead of keeping it under that name.
    ``marks``, when given, receives :func:`whiteout_mark` of each whiteout entry, in
    layer order (an extracted overlay lower layer records them as marks of its own).
    ``owner`` (uid, gid) replaces every entry's own (``ADD --chown`` of an archive).
    ``lower`` finds what the layers below show at a path: a hard link to a file only they
    hold copies it up (:mod:`.linkup`); without it, such a link is a MissingLinkTarget.
    ``untar``: ``src`` is an archive ``ADD`` unpacks, read as Docker's untar reads one: a
    hard link's target or an entry's name climbs no higher than ``rootfs`` (``../x`` names
    ``x``, where a layer's is refused: :mod:`.untarname`), and the link entry's owner, mode
    and mtime are given to the file it joins (:mod:`.linkup`).

    Raises UnsafeLayerEntry for an entry that could reach outside ``rootfs`` (nothing
    outside is touched; entries before it have been applied), LayerFormatError for a blob
    that is not a readable (compressed) tar.
    """
    root = os.path.realpath(rootfs)
    if not os.path.isdir(root):
        raise LayerFormatError(f"rootfs {root!r} is not a directory; create it first")
    if isinstance(src, (str, Path)):
        with open(src, "rb") as f:
            return apply_layer(f, root, same_owner=same_owner, marks=marks, owner=owner,
                               diff_id=diff_id, lower=lower, untar=untar)
    applier = _Applier(root, os.geteuid() == 0 if same_owner is None else same_owner, owner,
                       lower, untar)
    stream = open_layer(src)
    digesting = None if diff_id is None else Digesting(stream, diff_id)
    try:
        with open_tar(cast("IO[bytes]", digesting or stream)) as tf:
            for member in tar_members(tf):
                parts = (untar_name(member.name, is_dir=member.isdir()) if untar
                         else clean_name(member.name) or None)
                if not parts:  # None: the rootfs itself ("./"), its metadata the host's choice
                    if parts is not None:  # ADD's "../", "/": the destination's metadata
                        applier.dirs.append((root, os.lstat(root).st_ino, member))
                    continue
                try:
                    if parts[-1].startswith(WHITEOUT_PREFIX):
                        applier.whiteout(member.name, parts)
                        if marks is not None and (mark := whiteout_mark(parts)) is not None:
                            marks.append(mark)
                    else:
                        applier.entry(tf, member, parts)
                except OSError as exc:
                    if exc.errno not in _LAYOUT_ERRNOS:
                        raise
                    if exc.errno == errno.ENAMETOOLONG:
                        raise LayerFormatError(name_too_long(member)) from exc
                    raise LayerFormatError(
                        f"layer entry {member.name!r} cannot be applied: {exc.strerror} "
                        f"({exc.filename}); the layer does not fit on its lower layers"
                    ) from exc
        if digesting is not None:
            while digesting.read(_READ):  # what follows the end blocks counts too
                pass
    except (tarfile.TarError, EOFError, zlib.error, InflateError, gzip.BadGzipFile,
            zstandard.ZstdError) as exc:
        raise LayerFormatError(
            f"layer is not a readable tar (plain, gzip or zstd): {exc}; check that the "
            "blob is complete and its digest verified"
        ) from exc
    if diff_id is not None and digesting is not None \
            and (found := digesting.hasher.hexdigest()) != diff_id.encoded:
        raise LayerFormatError(
            f"layer's uncompressed content has digest {diff_id.algorithm}:{found}, but the "
            f"image config lists {diff_id} for it: the image's config does not describe "
            "its layers (corrupted or tampered with); rebuild or re-push the image")
    applier.finish()
    return ApplyReport(applier.entries, applier.whiteouts, tuple(applier.skipped))
