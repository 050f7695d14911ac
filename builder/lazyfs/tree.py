"""The inodes of a lazy layer, made from its TOC as an extraction would make its
overlayfs lower directory (:mod:`builder.extracted`): the entries in layer order (a later
entry replaces an earlier one of the same name), missing parent directories made 0755
root-owned, hard links sharing one inode, whiteouts as 0/0 character devices (unless the
layer writes the name itself) and opaque directories marked with the overlay xattr.

Names are the TOC's checked components (:func:`builder.lazyfs.toc.parse_toc`): no
entry can name anything outside the layer's root. A hard link to a name the layer does
not hold (it would come from a lower layer) or to a directory is refused (TocError), as
the extraction refuses it.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from ..layers.changeset import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from .toc import Toc, TocEntry, TocError

__all__ = ["Inode", "Tree"]

_KINDS = {"reg": stat.S_IFREG, "dir": stat.S_IFDIR, "sym": stat.S_IFLNK,
          "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}


@dataclass(eq=False)
class Inode:
    ino: int
    mode: int  # with the S_IF* type bits
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    rdev: tuple[int, int] = (0, 0)
    target: bytes = b""  # a symlink's
    xattrs: dict[str, bytes] = field(default_factory=dict)
    entry: TocEntry | None = None  # a regular file's data
    children: dict[str, Inode] | None = None  # a directory's
    nlink: int = 1

    @property
    def is_dir(self) -> bool:
        return self.children is not None


class Tree:
    """The inodes of one TOC; ``inodes[ino]``, the root is ino 1."""

    def __init__(self, toc: Toc, opaque_xattr: str) -> None:
        self.opaque_xattr = opaque_xattr
        self.inodes: dict[int, Inode] = {}
        self.root = self._new(stat.S_IFDIR | 0o755, children={})
        self._written: set[tuple[str, ...]] = set()
        self._whiteouts: list[tuple[str, ...]] = []
        for entry in toc.entries:
            self._add(entry)
        for parts in self._whiteouts:
            if parts not in self._written:
                parent = self._dir(parts[:-1])
                if parts[-1] not in parent.children:  # type: ignore[operator]
                    parent.children[parts[-1]] = self._new(  # type: ignore[index]
                        stat.S_IFCHR | 0o600)
        self._written.clear()
        self._whiteouts.clear()

    def _new(self, mode: int, **kw: object) -> Inode:
        node = Inode(len(self.inodes) + 1, mode, **kw)  # type: ignore[arg-type]
        self.inodes[node.ino] = node
        return node

    def _dir(self, parts: tuple[str, ...]) -> Inode:
        node = self.root
        for i, part in enumerate(parts):
            assert node.children is not None
            child = node.children.get(part)
            if child is None:
                child = node.children[part] = self._new(stat.S_IFDIR | 0o755, children={})
            elif not child.is_dir:
                # an extraction would follow a symlink there: that layer is extracted
                raise TocError(f"{'/'.join(parts)!r}: a parent in the layer is not a directory")
            self._written.add(parts[:i + 1])
            node = child
        return node

    def lookup(self, parts: tuple[str, ...]) -> Inode | None:
        node: Inode | None = self.root
        for part in parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(part)
        return node

    def _add(self, e: TocEntry) -> None:
        base = e.parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            if base == OPAQUE_WHITEOUT:
                self._dir(e.parts[:-1]).xattrs[self.opaque_xattr] = b"y"
            elif not base.startswith(WHITEOUT_PREFIX * 2):
                name = base[len(WHITEOUT_PREFIX):]
                if name in ("", ".", ".."):
                    raise TocError(f"entry {e.name!r}: whiteout of an empty, '.' or '..' name")
                self._whiteouts.append((*e.parts[:-1], name))
            return
        parent = self._dir(e.parts[:-1])
        assert parent.children is not None
        self._written.add(e.parts)
        old = parent.children.get(base)
        if e.type == "hard":
            src = self.lookup(tuple(e.link.split("/")))
            if src is None or src.is_dir or src is self.root:
                raise TocError(f"entry {e.name!r}: hard link to {e.link!r}, which the layer "
                               "does not hold as a file before it")
            if old is not src:
                if old is not None:
                    old.nlink -= 1
                src.nlink += 1
                parent.children[base] = src
            return
        if e.type == "dir" and old is not None and old.is_dir:
            node = old  # a directory entry again: its metadata changes, not its children
            node.uid, node.gid, node.mtime = e.uid, e.gid, e.mtime
            node.mode = stat.S_IFDIR | e.mode
            node.xattrs = {**{k: v for k, v in node.xattrs.items() if k == self.opaque_xattr},
                           **_xattrs(e)}
            return
        if old is not None:
            old.nlink -= 1
        node = self._new(_KINDS[e.type] | e.mode, uid=e.uid, gid=e.gid, mtime=e.mtime,
                         xattrs=_xattrs(e))
        if e.type == "dir":
            node.children = {}
        elif e.type == "reg":
            node.size, node.entry = e.size, e
        elif e.type == "sym":
            node.mode = stat.S_IFLNK | 0o777  # as symlink(2) makes it, whatever the tar says
            node.target = e.link.encode("utf-8", "surrogateescape")
            node.size = len(node.target)
        elif e.type in ("char", "block"):
            node.rdev = e.dev
        parent.children[base] = node


def _xattrs(e: TocEntry) -> dict[str, bytes]:
    # the layer's own overlay xattrs would be read by the overlay as its own marks
    return {k: v for k, v in e.xattrs.items()
            if not k.startswith(("trusted.overlay.", "user.overlay."))}
