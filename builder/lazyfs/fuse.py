"""A read-only FUSE file system served from a :class:`~builder.lazyfs.tree.Tree`, speaking
the kernel's FUSE protocol over ``/dev/fuse`` directly (``include/uapi/linux/fuse.h``).

Why no library: the protocol subset a read-only tree needs (INIT, LOOKUP, FORGET,
GETATTR, READLINK, OPEN, READ, RELEASE, OPENDIR, READDIR, RELEASEDIR, STATFS, GETXATTR,
LISTXATTR, ACCESS, FLUSH, INTERRUPT, DESTROY) is a few fixed structs; and the mount is
``mount(2)`` with ``fd=N`` by a process that is root in its user namespace, which
libfuse's ``fusermount3`` (a setuid helper of the host's namespace) cannot do for a
non-root build. pyfuse3 and fusepy would add libfuse and a C build for that.

The server runs in threads of this process (:data:`_THREADS` readers of the one
``/dev/fuse`` descriptor); a READ calls ``read_file`` in that thread, which may wait
for the event loop (a Range request), never the other way round: the event loop must
never touch the mount. :meth:`FuseMount.close` unmounts (lazily: ``MNT_DETACH``) and the
threads end when the kernel says the connection is gone (``ENODEV``).

Every file is presented as the TOC gives it: ids, mode, mtime, device numbers, hard
link counts, symlink targets, xattrs (the overlay's opaque mark among them). The mount
is read-only, ``default_permissions`` (the kernel checks modes) and ``allow_other``
(the overlay and the step read it with their own credentials).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from .tree import Inode, Tree

__all__ = ["FuseMount", "FuseUnavailable"]

# PYBUILD_FUSE_DEVICE names another device (a path that does not exist turns lazy mounts
# off: the layers are fetched whole, as on a machine without FUSE)
FUSE_DEVICE = os.environ.get("PYBUILD_FUSE_DEVICE", "/dev/fuse")
_THREADS = 4
_MAX_READ = 128 << 10
_BUFSIZE = _MAX_READ + 4096
_VALID = 86400  # seconds the kernel may keep names and attributes: the tree never changes
_MS_RDONLY, _MS_NOSUID, _MS_NODEV = 1, 2, 4
_MNT_DETACH = 2

# opcodes
(_LOOKUP, _FORGET, _GETATTR, _READLINK, _OPEN, _READ, _STATFS, _RELEASE, _GETXATTR,
 _LISTXATTR, _FLUSH, _INIT, _OPENDIR, _READDIR, _RELEASEDIR, _ACCESS, _INTERRUPT,
 _DESTROY, _BATCH_FORGET) = (1, 2, 3, 5, 14, 15, 17, 18, 22, 23, 25, 26, 27, 28, 29, 34,
                             36, 38, 42)
_NO_REPLY = {_FORGET, _BATCH_FORGET, _INTERRUPT}
_IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, ...
_OUT_HEADER = struct.Struct("<IiQ")
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
_ENTRY_OUT = struct.Struct("<QQQQII")
_ATTR_OUT = struct.Struct("<QII")
_INIT_OUT = struct.Struct("<IIIIHHIIHHII6I")  # 64 bytes, as 7.31+ has it
_OPEN_OUT = struct.Struct("<QII")
_READ_IN = struct.Struct("<QQI")
_DIRENT = struct.Struct("<QQII")
_STATFS_OUT = struct.Struct("<QQQQQIIII6I")
_FOPEN_KEEP_CACHE = 1 << 1
_FUSE_ASYNC_READ = 1 << 0
_FUSE_MAX_PAGES = 1 << 22

_libc = ctypes.CDLL(None, use_errno=True)


class FuseUnavailable(OSError):
    """FUSE cannot be used here (no ``/dev/fuse``, no permission to open it or to mount)."""


def _dev(major: int, minor: int) -> int:
    # the kernel's new_encode_dev
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _attr(node: Inode) -> bytes:
    t = node.mtime
    return _ATTR.pack(node.ino, node.size, (node.size + 511) // 512, t, t, t, 0, 0, 0,
                      node.mode, node.nlink + (len([c for c in (node.children or {}).values()
                                                    if c.is_dir]) + 1 if node.is_dir else 0),
                      node.uid, node.gid, _dev(*node.rdev), 4096, 0)


class FuseMount:
    """``tree`` mounted read-only at ``target``; ``read_file(node, offset, size)`` gives
    a regular file's bytes (it runs in a server thread). FuseUnavailable: /dev/fuse
    cannot be opened or the mount is not permitted."""

    def __init__(self, tree: Tree, target: Path,
                 read_file: Callable[[Inode, int, int], bytes]) -> None:
        self.tree = tree
        self.target = target
        self.read_file = read_file
        try:
            self.fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise FuseUnavailable(exc.errno, f"cannot open {FUSE_DEVICE}: {exc.strerror}") \
                from exc
        root = tree.root
        data = (f"fd={self.fd},rootmode={root.mode:o},user_id={os.getuid()},"
                f"group_id={os.getgid()},default_permissions,allow_other").encode()
        if _libc.mount(b"pybuild-lazy", str(target).encode(), b"fuse",
                       _MS_RDONLY | _MS_NOSUID | _MS_NODEV, data) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise FuseUnavailable(err, f"cannot mount a FUSE file system on {target}: "
                                       f"{os.strerror(err)}")
        self._closed = False
        self._threads = [threading.Thread(target=self._serve, name=f"lazyfs-{i}", daemon=True)
                         for i in range(_THREADS)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Unmount and let the server threads end (idempotent)."""
        if self._closed:
            return
        self._closed = True
        _libc.umount2(str(self.target).encode(), _MNT_DETACH)
        for t in self._threads:
            t.join(timeout=5)
        if not any(t.is_alive() for t in self._threads):
            os.close(self.fd)

    # -- the protocol -------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            try:
                req = os.read(self.fd, _BUFSIZE)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: a request interrupted before it was read
                return  # ENODEV: unmounted
            if len(req) < _IN_HEADER.size:
                continue
            _, opcode, unique, nodeid, *_ = _IN_HEADER.unpack_from(req)
            if opcode in _NO_REPLY:
                continue
            body = memoryview(req)[_IN_HEADER.size:]
            try:
                reply = self._handle(opcode, nodeid, body)
                err = 0
            except OSError as exc:
                reply, err = b"", -(exc.errno or errno.EIO)
            except Exception:  # a bug must not hang the step reading the file
                reply, err = b"", -errno.EIO
            try:
                os.write(self.fd, _OUT_HEADER.pack(_OUT_HEADER.size + len(reply), err, unique)
                         + reply)
            except OSError:
                pass  # the request was interrupted, or the mount is gone
            if opcode == _DESTROY:
                return

    def _node(self, nodeid: int) -> Inode:
        node = self.tree.inodes.get(nodeid)
        if node is None:
            raise OSError(errno.ENOENT, "no such inode")
        return node

    def _handle(self, opcode: int, nodeid: int, body: memoryview) -> bytes:
        if opcode == _INIT:
            major, minor, readahead, _flags = struct.unpack_from("<IIII", body)
            if major != 7:
                raise OSError(errno.EPROTO, "FUSE major version")
            return _INIT_OUT.pack(7, min(minor, 31), readahead, _FUSE_ASYNC_READ | _FUSE_MAX_PAGES,
                                  16, 12, _MAX_READ, 1, _MAX_READ // 4096, 0, 0, 0,
                                  *([0] * 6))
        if opcode == _DESTROY:
            return b""
        node = self._node(nodeid)
        if opcode == _LOOKUP:
            name = bytes(body).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            child = (node.children or {}).get(name) if node.is_dir else None
            if node.children is None:
                raise OSError(errno.ENOTDIR, "not a directory")
            if child is None:
                raise OSError(errno.ENOENT, "no such file")
            return _ENTRY_OUT.pack(child.ino, 1, _VALID, _VALID, 0, 0) + _attr(child)
        if opcode == _GETATTR:
            return _ATTR_OUT.pack(_VALID, 0, 0) + _attr(node)
        if opcode == _READLINK:
            if not stat.S_ISLNK(node.mode):
                raise OSError(errno.EINVAL, "not a symlink")
            return node.target
        if opcode in (_OPEN, _OPENDIR):
            if (opcode == _OPENDIR) != node.is_dir:
                raise OSError(errno.ENOTDIR if opcode == _OPENDIR else errno.EISDIR, "type")
            return _OPEN_OUT.pack(0, _FOPEN_KEEP_CACHE, 0)
        if opcode == _READ:
            _fh, offset, size = _READ_IN.unpack_from(body)
            if node.entry is None:
                raise OSError(errno.EINVAL, "not a regular file")
            if offset >= node.size:
                return b""
            return self.read_file(node, offset, min(size, node.size - offset))
        if opcode == _READDIR:
            _fh, offset, size = _READ_IN.unpack_from(body)
            return self._readdir(node, offset, size)
        if opcode in (_RELEASE, _RELEASEDIR, _FLUSH, _ACCESS):
            return b""
        if opcode == _STATFS:
            return _STATFS_OUT.pack(0, 0, 0, len(self.tree.inodes), 0, 4096, 255, 4096, 0,
                                    *([0] * 6))
        if opcode == _GETXATTR:
            (size,) = struct.unpack_from("<I", body)
            name = bytes(body[8:]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            value = node.xattrs.get(name)
            if value is None:
                raise OSError(errno.ENODATA, "no such attribute")
            return _sized(value, size)
        if opcode == _LISTXATTR:
            (size,) = struct.unpack_from("<I", body)
            names = b"".join(k.encode("utf-8", "surrogateescape") + b"\0"
                             for k in sorted(node.xattrs))
            return _sized(names, size)
        raise OSError(errno.ENOSYS, "not implemented")

    def _readdir(self, node: Inode, offset: int, size: int) -> bytes:
        if node.children is None:
            raise OSError(errno.ENOTDIR, "not a directory")
        parent = node  # ".." is resolved by the kernel; its inode number matters little
        items = [(".", node), ("..", parent), *sorted(node.children.items())]
        out = bytearray()
        for i in range(offset, len(items)):
            name, child = items[i]
            raw = name.encode("utf-8", "surrogateescape")
            rec = _DIRENT.pack(child.ino, i + 1, len(raw), stat.S_IFMT(child.mode) >> 12) + raw
            rec += b"\0" * (-len(rec) % 8)
            if len(out) + len(rec) > size:
                break
            out += rec
        return bytes(out)


def _sized(value: bytes, size: int) -> bytes:
    if size == 0:
        return struct.pack("<II", len(value), 0)
    if len(value) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return value
