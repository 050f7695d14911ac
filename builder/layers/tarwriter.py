"""A deterministic tar writer: the same changeset gives the same bytes on any machine.

Format (POSIX.1-2001 pax, as Go's archive/tar and BuildKit write it):

- entries in :meth:`Changeset.tar_order` (parents first, names sorted by bytes);
- ustar headers; a pax extended header (``typeflag 'x'``, name ``././@PaxHeader``, all
  other fields zero) precedes an entry only when needed: a name or link target longer
  than 100 bytes or not ASCII (``path``/``linkpath``), a size, uid, gid or mtime too large
  for its octal field, and xattrs (``SCHILY.xattr.<name>``, value bytes verbatim). Pax
  records are sorted by keyword;
- numeric fields in zero-padded octal, NUL-terminated; ``uname``/``gname`` empty;
  directories named with a trailing ``/``; hard links as ``typeflag '1'`` entries whose
  link name is the layer path of the first link; whiteouts as empty regular files
  ``.wh.<name>`` (mode 0644, owner 0:0);
- the archive ends with two zero blocks (no padding to a 10240-byte record).

A file whose name starts with ``.wh.`` cannot be written (ChangesetError): in a layer that
prefix marks a deletion, so every puller would delete ``passwd`` for ``.wh.passwd`` (and
hide a whole directory for ``.wh..wh..opq``) instead of creating the file.

Timestamps: with ``source_date_epoch`` set, every mtime later than it is *clamped* to it
(BuildKit's ``rewrite-timestamp``): a file created by the step gets the epoch, while a file
that kept an older time (copied from a base image, or extracted with its archive's
mtime) keeps it, so the layer still says which files the step did not touch. Whiteouts
get the epoch. Without it, mtimes are kept (whiteouts get 0). Sub-second parts are always
dropped (no pax ``mtime`` records), and atime/ctime are never written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from cas.digest import Digest, new_hasher

from .changeset import WHITEOUT_PREFIX, Changeset, Entry, EntryKind, Whiteout
from .errors import ChangesetError, SourceChanged
from .longpath import short

__all__ = ["BLOCK_SIZE", "iter_tar", "pax_header_bytes", "ustar_header", "write_tar"]

BLOCK_SIZE = 512
_READ = 1 << 20
_TYPEFLAG = {
    EntryKind.FILE: b"0",
    EntryKind.HARDLINK: b"1",
    EntryKind.SYMLINK: b"2",
    EntryKind.CHAR: b"3",
    EntryKind.BLOCK: b"4",
    EntryKind.DIR: b"5",
    EntryKind.FIFO: b"6",
}


def _octal(value: int, width: int) -> bytes | None:
    """``value`` as zero-padded octal + NUL in ``width`` bytes, or None if it does not fit."""
    if value < 0:
        return None
    digits = b"%0*o" % (width - 1, value)
    return digits + b"\0" if len(digits) == width - 1 else None


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n += 1
    return b"%d" % n + body


def ustar_header(name: bytes, typeflag: bytes, *, mode: int = 0, uid: int = 0, gid: int = 0,
                 size: int = 0, mtime: int = 0, linkname: bytes = b"",
                 devmajor: int = 0, devminor: int = 0) -> bytes:
    """One 512-byte ustar header. Fields that do not fit must have been moved to a pax
    header by the caller; here they are written as zero / truncated."""
    def num(value: int, width: int) -> bytes:
        return _octal(value, width) or _octal(0, width)  # type: ignore[return-value]

    fields = [
        name[:100].ljust(100, b"\0"),
        num(mode, 8), num(uid, 8), num(gid, 8), num(size, 12), num(mtime, 12),
        b" " * 8,  # checksum placeholder
        typeflag,
        linkname[:100].ljust(100, b"\0"),
        b"ustar\x0000",
        b"\0" * 32, b"\0" * 32,  # uname, gname: empty on purpose
        num(devmajor, 8), num(devminor, 8),
        b"\0" * 155,  # prefix: unused, long names go to pax
        b"\0" * 12,
    ]
    header = bytearray(b"".join(fields))
    assert len(header) == BLOCK_SIZE
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % BLOCK_SIZE)


def pax_header_bytes(records: dict[bytes, bytes]) -> bytes:
    """A pax extended header entry (header + data + padding) holding ``records``."""
    data = b"".join(_pax_record(k, records[k]) for k in sorted(records))
    return ustar_header(b"././@PaxHeader", b"x", size=len(data)) + data + _pad(len(data))


def _fits_ustar(name: bytes) -> bool:
    return len(name) <= 100 and name.isascii()


def _header(name: bytes, typeflag: bytes, *, mode: int, uid: int, gid: int, size: int,
            mtime: int, linkname: bytes = b"", devmajor: int = 0, devminor: int = 0,
            xattrs: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    pax: dict[bytes, bytes] = {}
    if not _fits_ustar(name):
        pax[b"path"] = name
    if not _fits_ustar(linkname):
        pax[b"linkpath"] = linkname
    for key, value, width in ((b"uid", uid, 8), (b"gid", gid, 8), (b"size", size, 12),
                              (b"mtime", mtime, 12)):
        if _octal(value, width) is None:
            pax[key] = b"%d" % value
    for xname, xvalue in xattrs:
        pax[b"SCHILY.xattr." + xname.encode("utf-8", "surrogateescape")] = xvalue
    head = pax_header_bytes(pax) if pax else b""
    return head + ustar_header(
        name if _fits_ustar(name) else name[:100], typeflag, mode=mode, uid=uid, gid=gid,
        size=size, mtime=mtime, linkname=linkname, devmajor=devmajor, devminor=devminor)


def _mtime(ns: int, epoch: int | None) -> int:
    seconds = ns // 1_000_000_000
    return seconds if epoch is None else min(seconds, epoch)


def _file_data(entry: Entry) -> Iterator[bytes]:
    assert entry.source is not None
    remaining = entry.size
    with short(entry.source) as source:  # below a long storage path: longpath
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb", buffering=0) as f:
        while remaining:
            chunk = f.read(min(_READ, remaining))
            if not chunk:
                raise SourceChanged(entry.source, entry.size, entry.size - remaining)
            remaining -= len(chunk)
            yield chunk
        if f.read(1):
            raise SourceChanged(entry.source, entry.size, entry.size + 1)
    yield _pad(entry.size)


def iter_tar(changeset: Changeset, *, source_date_epoch: int | None = None) -> Iterator[bytes]:
    """The tar stream of ``changeset``, as a sequence of byte strings (at most 1 MiB
    each, so memory stays bounded). Raises SourceChanged if a file's size changed, and
    ChangesetError for a name a layer cannot hold."""
    for item in changeset.tar_order():
        if isinstance(item, Whiteout):
            yield _header(os.fsencode(item.tar_name), b"0", mode=0o644, uid=0, gid=0, size=0,
                          mtime=source_date_epoch or 0)
            continue
        if item.path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
            raise ChangesetError(
                f"/{item.path}: a name that starts with {WHITEOUT_PREFIX!r} cannot be in a "
                "layer, where it marks a deletion (whoever pulls the image would delete or "
                "hide files instead of getting this one); rename it or leave it out")
        name = os.fsencode(item.path)
        if item.kind is EntryKind.DIR:
            name += b"/"
        link = os.fsencode(item.link) if item.kind in (EntryKind.SYMLINK,
                                                        EntryKind.HARDLINK) else b""
        size = item.size if item.kind is EntryKind.FILE else 0
        yield _header(name, _TYPEFLAG[item.kind], mode=item.mode, uid=item.uid, gid=item.gid,
                      size=size, mtime=_mtime(item.mtime_ns, source_date_epoch),
                      linkname=link, devmajor=item.devmajor, devminor=item.devminor,
                      xattrs=item.xattrs)
        if item.kind is EntryKind.FILE and item.size:
            yield from _file_data(item)
    yield b"\0" * (2 * BLOCK_SIZE)


def write_tar(changeset: Changeset, out: BinaryIO, *,
              source_date_epoch: int | None = None) -> tuple[Digest, int]:
    """Write the uncompressed tar of ``changeset`` to ``out``; return (diff_id, size)."""
    h = new_hasher("sha256")
    size = 0
    for chunk in iter_tar(changeset, source_date_epoch=source_date_epoch):
        h.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return Digest("sha256", h.hexdigest()), size
