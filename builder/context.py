"""Where COPY/ADD read from: the build context (with ``.dockerignore``) or a stage's root.

A :class:`SourceTree` resolves a COPY source (``src``, wildcards allowed) to the paths it
names and walks them. Two flavours:

- the build context (``strict``): a source that leaves the context (``../x``) is refused
  with :class:`ContextError`; paths the ``.dockerignore`` excludes do not exist;
- a stage's or image's root filesystem.

In both, symlinks resolve inside the tree (chroot semantics, as BuildKit does for the
context too): a link to ``/data`` names the context's ``data``, ``..`` stops at the root.

Symlinks *inside* a copied directory are copied as symlinks, never followed.

:meth:`SourceTree.hash_files` gives the content keys the build cache uses; for the build
context it reuses the hash recorded for a file whose ``lstat`` (size, mtime, ctime,
inode, device, mode) has not changed, and hashes the others in threads.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from .ignore import IgnoreFileError, IgnoreMatcher, name_matches
from .layers.errors import UnsafeLayerEntry
from .layers.pathres import resolve_in_root
from .layers.scan import read_xattrs

# IgnoreFileError: what reading the context's .dockerignore raises (from builder.ignore)
__all__ = ["AnyStat", "ContextError", "DiskPath", "FileHashStore", "FileStat", "IgnoreFileError",
           "Source", "SourceTree", "filtered_view", "hash_path", "unreadable"]

_GLOB = set("*?[")

# A file changed less than this long ago may change again within the same timestamp
# tick without its lstat changing ("racily clean", as git calls it): its hash is not
# remembered, so the next build reads it again.
RACY_NS = 2_000_000_000
_HASH_THREADS = 4
# hash_files looks remembered hashes up, and remembers new ones, this many files at a
# time: what it holds besides its result stays bounded, whatever the context's size
_HASH_BATCH = 4096


class FileStat:
    """What a build uses of a file's ``lstat``, in a third of the memory of an
    ``os.stat_result`` (which holds every field, times in three forms): a walk of a
    context of 100,000s of files keeps one per file. The values most files share (mode,
    device, owner) are shared objects, not one int each."""

    __slots__ = ("st_ctime_ns", "st_dev", "st_gid", "st_ino", "st_mode", "st_mtime_ns",
                 "st_nlink", "st_size", "st_uid")

    def __init__(self, st: os.stat_result) -> None:
        shared = _SHARED
        if len(shared) > 4096:  # a bound, should a tree hold that many distinct values
            shared.clear()
        self.st_mode = shared.setdefault(st.st_mode, st.st_mode)
        self.st_size = st.st_size
        self.st_mtime_ns = st.st_mtime_ns
        self.st_ctime_ns = st.st_ctime_ns
        self.st_ino = st.st_ino
        self.st_dev = shared.setdefault(st.st_dev, st.st_dev)
        self.st_nlink = st.st_nlink
        self.st_uid = shared.setdefault(st.st_uid, st.st_uid)
        self.st_gid = shared.setdefault(st.st_gid, st.st_gid)


_SHARED: dict[int, int] = {}


AnyStat = os.stat_result | FileStat
# a walk's disk paths are strings (a Path per file costs three times the memory)
DiskPath = Path | str


class FileHashStore(Protocol):
    """Where remembered file hashes live (the local :class:`builder.cache.BuildCache`;
    not part of :class:`builder.cache.BuildCacheBackend`: they describe this machine's
    files)."""

    def file_hashes(self, paths: list[str]) -> dict[str, tuple[str, str]]: ...

    def put_file_hashes(self, rows: list[tuple[str, str, str]]) -> None: ...


def _signature(st: AnyStat) -> str:
    return (f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}:"
            f"{st.st_mode}")


class ContextError(ValueError):
    """A COPY/ADD source that is missing or not allowed (names the source and why)."""


@dataclass(frozen=True, slots=True)
class Source:
    """One resolved source: ``rel`` inside the tree, ``path`` on disk (symlinks followed
    for the source itself), and whether it is a directory; ``real`` is ``path`` relative
    to the tree (what ``.dockerignore`` is asked about: BuildKit's context holds no file
    it excludes, whatever link leads there)."""

    rel: str
    path: Path
    is_dir: bool
    real: str = ""


class SourceTree:
    def __init__(self, root: Path, matcher: IgnoreMatcher | None = None, *,
                 strict: bool = True, what: str = "build context",
                 hash_store: FileHashStore | None = None, keep_owners: bool = False) -> None:
        self.root = Path(os.path.realpath(root))
        self.matcher = matcher or IgnoreMatcher([])
        self.strict = strict
        # COPY keeps these files' owners (a stage's or an image's root, as BuildKit; the
        # docker CLI sends the context as root's)
        self.keep_owners = keep_owners
        self.what = what
        self.hash_store = hash_store

    # -- content keys -----------------------------------------------------------------
    def hash_files(self, files: Sequence[tuple[DiskPath, AnyStat]]) -> list[str]:
        """:func:`hash_path` of each (path, lstat), in order. Blocking: call it from a
        thread. Regular files whose lstat matches a remembered one reuse its hash; the
        rest are read in a few threads (BLAKE3 releases the GIL) and remembered unless
        changed within the last :data:`RACY_NS`."""
        out: list[str] = []
        for start in range(0, len(files), _HASH_BATCH):
            out.extend(self._hash_batch(files[start:start + _HASH_BATCH]))
        return out

    def _hash_batch(self, files: Sequence[tuple[DiskPath, AnyStat]]) -> list[str]:
        out: list[str | None] = [None] * len(files)
        known: dict[str, tuple[str, str]] = {}
        store = self.hash_store
        if store is not None:
            known = store.file_hashes(
                [os.fspath(p) for p, st in files if stat.S_ISREG(st.st_mode)])
        todo: list[int] = []
        for i, (p, st) in enumerate(files):
            hit = known.get(os.fspath(p))
            if hit is not None and hit[0] == _signature(st):
                out[i] = hit[1]
            else:
                todo.append(i)
        big = [i for i in todo if files[i][1].st_size >= 1 << 16]
        if len(big) > 1:
            with ThreadPoolExecutor(min(_HASH_THREADS, len(big)),
                                    thread_name_prefix="context-hash") as pool:
                for i, h in zip(big, pool.map(lambda i: hash_path(*files[i]), big)):
                    out[i] = h
        for i in todo:
            if out[i] is None:
                out[i] = hash_path(*files[i])
        if store is not None:
            fresh = time.time_ns() - RACY_NS
            store.put_file_hashes([
                (os.fspath(files[i][0]), _signature(files[i][1]), out[i] or "") for i in todo
                if stat.S_ISREG(files[i][1].st_mode)
                and max(files[i][1].st_mtime_ns, files[i][1].st_ctime_ns) < fresh])
        return [h or "" for h in out]

    def owner_key(self, path: DiskPath, st: AnyStat) -> str:
        """What a stage's (or image's) file adds to its content key: its owner and its
        xattrs, which COPY keeps and a stage may change alone (``setcap``)."""
        if not self.keep_owners:
            return ""
        key = f" owner:{st.st_uid}:{st.st_gid}"
        if xattrs := read_xattrs(os.fspath(path)):
            h = blake3.blake3()
            for name, value in xattrs:
                h.update(os.fsencode(name) + b"\0" + value + b"\0")
            key += f" xattrs:{h.hexdigest()[:32]}"
        return key

    # -- resolution -------------------------------------------------------------------
    def _clean(self, src: str) -> str:
        rel = posixpath.normpath(src.lstrip("/") if not self.strict else src)
        if self.strict and (rel == ".." or rel.startswith("../") or src.startswith("/..")):
            raise ContextError(f"{src!r} is outside the {self.what}: COPY and ADD can only "
                               "read files inside it (move the file into the context)")
        rel = rel.lstrip("/")
        return "" if rel == "." else rel

    def _real(self, rel: str, src: str) -> Path:
        # Symlinks resolve inside the tree, the context too (as BuildKit, which copies the
        # context and resolves in that copy): an absolute target starts at the tree's
        # root and '..' stops there, so a link can name nothing outside it.
        try:
            return Path(resolve_in_root(str(self.root), rel.split("/") if rel else [],
                                        follow_final=True))
        except UnsafeLayerEntry:
            raise ContextError(f"{src!r}: too many levels of symbolic links in the "
                               f"{self.what}") from None

    def _unfollowed(self, rel: str, src: str) -> Path:
        """Where ``rel`` is, its directory resolved inside the tree, its last name not."""
        head, name = posixpath.split(rel)
        return (self._real(head, src) if head else self.root) / name

    def excluded(self, rel: str) -> bool:
        return bool(rel) and self.matcher.excluded(rel)

    def resolve(self, src: str, *, allow_empty_wildcard: bool = False) -> list[Source]:
        """The sources ``src`` names, sorted; ContextError when none exists.

        With ``allow_empty_wildcard`` (COPY and ADD, as BuildKit's Dockerfile front end
        asks for), a wildcard that matches nothing names no sources, as long as the
        directory above its first wildcard exists: ``COPY pom.xml target/lib* /app/``."""
        rel = self._clean(src)
        parts = rel.split("/") if rel else []
        if any(set(p) & _GLOB for p in parts):
            rels = self._glob(parts)
            if not rels and allow_empty_wildcard and self._wildcard_base_exists(parts):
                return []
        else:
            rels = [rel] if not self.excluded(rel) and (
                os.path.lexists(self._unfollowed(rel, src)) or not self.strict) else []
        out = []
        for r in rels:
            real = self._real(r, src)
            try:
                st = os.stat(real)
            except OSError:
                continue
            real_rel = os.path.relpath(real, self.root)
            real_rel = "" if real_rel == "." else real_rel
            if self.strict and self.excluded(real_rel):
                continue  # a link to what .dockerignore leaves out
            out.append(Source(r, real, stat.S_ISDIR(st.st_mode), real_rel))
        if not out:
            hint = " (or it is excluded by .dockerignore)" if self.strict else ""
            if len(rels) == 1 and rels[0]:
                link = self._unfollowed(rels[0], src)
                if os.path.islink(link):
                    hint = (f" (it is a symlink to {os.readlink(link)!r}, which is looked up "
                            f"inside the {self.what}: a link cannot leave it, nor lead to "
                            "what .dockerignore excludes)")
            raise ContextError(f"{src!r} not found in the {self.what}{hint}")
        return out

    def _wildcard_base_exists(self, parts: list[str]) -> bool:
        base = "/".join(itertools.takewhile(lambda p: not set(p) & _GLOB, parts))
        try:
            return (not base or not self.excluded(base)) and os.path.isdir(
                self._real(base, base) if base else self.root)
        except ContextError:
            return False

    def _glob(self, parts: list[str]) -> list[str]:
        found = [""]
        for part in parts:
            nxt = []
            for base in found:
                d = self._real(base, base) if base else self.root
                try:
                    names = sorted(os.listdir(d))
                except (NotADirectoryError, FileNotFoundError):
                    continue
                for n in names:
                    try:
                        matched = name_matches(part, n)
                    except ValueError:
                        # as BuildKit ("syntax error in pattern"), not a literal name
                        raise ContextError(
                            f"{'/'.join(parts)!r}: syntax error in pattern {part!r}: close "
                            "each '[' with ']' (a literal '[' is written '[[]')") from None
                    if matched:
                        r = f"{base}/{n}" if base else n
                        if not self.excluded(r):
                            nxt.append(r)
            found = nxt
        return found

    # -- walking ----------------------------------------------------------------------
    def walk(self, source: Source) -> Iterator[tuple[str, str, FileStat]]:
        """Every path under a directory source, parents first, as (path relative to the
        source, disk path, lstat); ignored paths (and their children) are left out."""
        def rec(rel_ctx: str, rel_src: str, disk: str) -> Iterator[tuple[str, str, FileStat]]:
            with os.scandir(disk or "/") as it:
                names = sorted(e.name for e in it)
            for name in names:
                r_ctx = f"{rel_ctx}/{name}" if rel_ctx else name
                r_src = f"{rel_src}/{name}" if rel_src else name
                p = f"{disk}/{name}"
                st = FileStat(os.lstat(p))
                if self.strict and self.excluded(r_ctx):
                    if stat.S_ISDIR(st.st_mode) and self.matcher.may_reinclude_below(r_ctx):
                        yield from (x for x in rec(r_ctx, r_src, p))
                    continue
                yield r_src, p, st
                if stat.S_ISDIR(st.st_mode):
                    yield from rec(r_ctx, r_src, p)
        yield from rec(source.real, "", os.fspath(source.path).rstrip("/"))


def unreadable(tree: SourceTree, exc: PermissionError) -> ContextError:
    """The error for a path of ``tree`` that the build may not read (another user's 0700
    directory or 0600 file in the context of a non-root build): the path inside the
    tree, and the fixes."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else "a path"
    if os.path.isabs(name) and _inside_dir(name, str(tree.root)):
        name = os.path.relpath(name, tree.root)
    fix = "make it readable by the user who runs the build"
    if tree.strict:
        fix += ", or leave it out of the context with .dockerignore"
    return ContextError(f"cannot read {name!r} in the {tree.what}: permission denied; {fix}")


def _inside_dir(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def filtered_view(tree: SourceTree, source: Source, dest: Path) -> Path:
    """``source`` (a directory of the context) as BuildKit's copy of the context has it,
    without what ``.dockerignore`` excludes: files hard-linked (copied across file
    systems) into the new directory ``dest``, which is returned. What a context bind
    mount shows."""
    dest.mkdir(mode=stat.S_IMODE(os.stat(source.path).st_mode))
    dirs: list[tuple[Path, os.stat_result]] = []
    for rel, path, st in tree.walk(source):
        target = dest / rel
        if stat.S_ISDIR(st.st_mode):
            target.mkdir()
            dirs.append((target, os.lstat(path)))  # its atime too, which a walk leaves out
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), target)
        elif stat.S_ISREG(st.st_mode):
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)
    for target, dst in reversed(dirs):
        os.chmod(target, stat.S_IMODE(dst.st_mode))
        os.utime(target, ns=(dst.st_atime_ns, dst.st_mtime_ns))
    return dest


def hash_path(path: DiskPath, st: AnyStat) -> str:
    """A content key of one path: kind, permission bits and content (or link target)."""
    h = blake3.blake3()
    h.update(f"{stat.S_IFMT(st.st_mode)}:{stat.S_IMODE(st.st_mode):o}:".encode())
    if stat.S_ISLNK(st.st_mode):
        h.update(os.fsencode(os.readlink(path)))
    elif stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:32]
