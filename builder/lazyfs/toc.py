"""A layer's table of contents (TOC): every entry of a chunked gzip layer and where its
bytes lie in the blob, so that one file can be read with an HTTP Range request and
decoded without fetching the rest of the layer (as eStargz's TOC does).

pybuild's layers are concatenated gzip members, each decodable alone
(:mod:`builder.layers.chunked`); any multi-member gzip blob is read the same way. The
TOC lists the members, ``[compressed offset, compressed length, uncompressed offset,
uncompressed length, sha256 of the compressed bytes]``, and the tar entries, each with
the uncompressed offset of its data. A file's bytes are those of the members that
overlap ``[offset, offset + size)`` of the tar stream; each member fetched is checked
against its sha256 before it is decoded.

Document (JSON, :data:`TOC_MEDIA_TYPE`)::

    {"mediaType": "application/vnd.pybuild.layer.toc.v1+json",
     "layer": "sha256:...", "size": <blob size>,
     "members": [[0, 1234, 0, 65536, "<hex>"], ...],
     "entries": [{"name": "opt/deps/lib00.so", "type": "reg", "mode": 420, "uid": 0,
                  "gid": 0, "size": 4194304, "mtime": 0, "offset": 1536,
                  "link": "", "dev": [0, 0], "xattrs": {"user.x": "<base64>"}}, ...]}

``type`` is one of ``reg dir sym hard char block fifo``; ``link`` is a symlink's target
or a hard link's source (an earlier entry's name). Whiteouts stay entries named
``.wh.*`` as in the tar. The TOC comes from whoever wrote the cache: :func:`parse_toc`
refuses anything that could lead a reader outside the layer (names with ``..``, offsets
or sizes past the members, members past the blob, oversized members).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..layers.errors import UnsafeLayerEntry
from ..layers.inflate import InflateError, gunzip_member
from ..layers.pathres import clean_name

__all__ = ["MAX_MEMBER", "TOC_MEDIA_TYPE", "Member", "Toc", "TocEntry", "TocError",
           "build_toc", "parse_toc"]

TOC_MEDIA_TYPE = "application/vnd.pybuild.layer.toc.v1+json"
# A member larger than this (either way) is refused: a reader holds one in memory.
MAX_MEMBER = 16 << 20
_MAX_ENTRIES = 1 << 20
_READ = 1 << 20
_TYPES = {tarfile.REGTYPE: "reg", tarfile.AREGTYPE: "reg", tarfile.CONTTYPE: "reg",
          tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "sym", tarfile.LNKTYPE: "hard",
          tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}
_XATTR_KEY = "SCHILY.xattr."


class TocError(ValueError):
    """A TOC that cannot be made or must not be trusted."""


@dataclass(frozen=True, slots=True)
class Member:
    coff: int
    clen: int
    uoff: int
    ulen: int
    sha256: str


@dataclass(frozen=True, slots=True)
class TocEntry:
    parts: tuple[str, ...]
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    offset: int = 0
    link: str = ""
    dev: tuple[int, int] = (0, 0)
    xattrs: dict[str, bytes] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class Toc:
    layer: str
    size: int
    members: tuple[Member, ...]
    entries: tuple[TocEntry, ...]

    def spans(self, offset: int, size: int) -> list[Member]:
        """The members that hold the uncompressed bytes ``[offset, offset + size)``."""
        if size <= 0:
            return []
        starts = [m.uoff for m in self.members]
        first = max(bisect.bisect_right(starts, offset) - 1, 0)
        out = []
        for m in self.members[first:]:
            if m.uoff >= offset + size:
                break
            if m.uoff + m.ulen > offset:
                out.append(m)
        return out


class _Members:
    """A reader of a multi-member gzip stream's decoded bytes that records each member."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.members: list[Member] = []
        self._coff = self._uoff = 0
        self._clen = self._ulen = 0
        self._hash = hashlib.sha256()
        self._dec: Any = None
        self._pending = b""
        self._buf = b""
        self._eof = False

    def _close_member(self, used: bytes) -> None:
        self._hash.update(used)
        self._clen += len(used)
        self.members.append(Member(self._coff, self._clen, self._uoff, self._ulen,
                                   self._hash.hexdigest()))
        self._coff += self._clen
        self._uoff += self._ulen
        self._clen = self._ulen = 0
        self._hash = hashlib.sha256()
        self._dec = None

    def _fill(self) -> None:
        while not self._buf and not self._eof:
            data = self._pending or self.src.read(_READ)
            self._pending = b""
            if not data:
                if self._dec is not None:
                    raise TocError("the layer ends inside a gzip member")
                self._eof = True
                return
            if self._dec is None:
                self._dec = gunzip_member()
            try:
                out = self._dec.decompress(data)
            except InflateError as exc:
                raise TocError(f"not a gzip layer: {exc}") from exc
            self._ulen += len(out)
            if self._ulen > MAX_MEMBER:
                raise TocError("a gzip member decodes to more than "
                               f"{MAX_MEMBER >> 20} MiB: not a chunked layer")
            self._buf = out
            if self._dec.eof:
                rest = self._dec.unused_data
                self._close_member(data[:len(data) - len(rest)])
                self._pending = rest
            else:
                self._hash.update(data)
                self._clen += len(data)

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            self._fill()
            if not self._buf:
                break
            piece, self._buf = self._buf[:want], self._buf[want:]
            out.append(piece)
            want -= len(piece)
        return b"".join(out)


def build_toc(src: BinaryIO, layer: str, blob_size: int) -> bytes:
    """The TOC document of the gzip layer read from ``src`` (blocking; reads it all).
    TocError: not a multi-member gzip tar whose members are small enough."""
    reader = _Members(src)
    entries: list[dict[str, Any]] = []
    try:
        with tarfile.open(fileobj=reader, mode="r|", errors="surrogateescape") as tf:  # type: ignore[call-overload]
            for info in tf:
                parts = clean_name(info.name)
                kind = _TYPES.get(info.type)
                if kind is None or (not parts and kind != "dir"):
                    raise TocError(f"layer entry {info.name!r}: tar type {info.type!r}")
                if not parts:
                    continue
                doc: dict[str, Any] = {
                    "name": "/".join(parts), "type": kind, "mode": info.mode & 0o7777,
                    "uid": info.uid, "gid": info.gid, "size": info.size if kind == "reg" else 0,
                    "mtime": int(info.mtime)}
                if kind == "reg":
                    doc["offset"] = info.offset_data
                if kind in ("sym", "hard"):
                    doc["link"] = info.linkname
                if kind in ("char", "block"):
                    doc["dev"] = [info.devmajor, info.devminor]
                xattrs = {k[len(_XATTR_KEY):]: base64.b64encode(
                    v.encode("utf-8", "surrogateescape")).decode()
                    for k, v in sorted(info.pax_headers.items()) if k.startswith(_XATTR_KEY)}
                if xattrs:
                    doc["xattrs"] = xattrs
                entries.append(doc)
        reader.read()  # to the end: every member is listed
    except (tarfile.TarError, EOFError, UnsafeLayerEntry) as exc:
        raise TocError(f"not a readable layer: {exc}") from exc
    members = [[m.coff, m.clen, m.uoff, m.ulen, m.sha256] for m in reader.members]
    if reader.members and reader.members[-1].coff + reader.members[-1].clen != blob_size:
        raise TocError("the blob's size differs from its members'")
    return json.dumps({"mediaType": TOC_MEDIA_TYPE, "layer": layer, "size": blob_size,
                       "members": members, "entries": entries},
                      sort_keys=True, separators=(",", ":")).encode()


def _int(doc: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = doc.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise TocError(f"entry {doc.get('name')!r}: {key} must be an integer in "
                       f"[{low}, {high}], not {value!r}")
    return value


def _entry(doc: Any, total: int) -> TocEntry:
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise TocError("an entry must be an object with a name")
    name = doc["name"]
    try:
        parts = tuple(clean_name(name))
    except UnsafeLayerEntry as exc:
        raise TocError(str(exc)) from exc
    if not parts or name.startswith("/") or len(name) > 4096:
        raise TocError(f"entry name {name!r}: must be relative, below the root")
    kind = doc.get("type")
    if kind not in ("reg", "dir", "sym", "hard", "char", "block", "fifo"):
        raise TocError(f"entry {name!r}: unknown type {kind!r}")
    size = _int(doc, "size", 0, total, 0) if kind == "reg" else 0
    offset = _int(doc, "offset", 0, total - size, 0) if kind == "reg" else 0
    link = doc.get("link", "")
    if not isinstance(link, str) or "\0" in link or len(link) > 4096:
        raise TocError(f"entry {name!r}: bad link")
    if kind == "hard":
        try:
            link = "/".join(clean_name(link, entry=name))
        except UnsafeLayerEntry as exc:
            raise TocError(str(exc)) from exc
    dev = doc.get("dev", [0, 0])
    if not (isinstance(dev, list) and len(dev) == 2
            and all(type(d) is int and 0 <= d < 1 << 20 for d in dev)):
        raise TocError(f"entry {name!r}: bad device numbers")
    xattrs: dict[str, bytes] = {}
    raw = doc.get("xattrs", {})
    if not isinstance(raw, dict):
        raise TocError(f"entry {name!r}: xattrs must be an object")
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key or "\0" in key:
            raise TocError(f"entry {name!r}: bad xattr")
        try:
            xattrs[key] = base64.b64decode(value, validate=True)
        except ValueError as exc:
            raise TocError(f"entry {name!r}: xattr {key!r} is not base64") from exc
    return TocEntry(parts, kind, _int(doc, "mode", 0, 0o7777), _int(doc, "uid", 0, 2**32 - 2),
                    _int(doc, "gid", 0, 2**32 - 2), size,
                    _int(doc, "mtime", -(2**62), 2**62, 0), offset, link,
                    (dev[0], dev[1]), xattrs)


def parse_toc(data: bytes, layer: str, blob_size: int) -> Toc:
    """The TOC of the blob ``layer`` (``blob_size`` bytes), checked so that no entry or
    member points outside the blob or the layer's root; TocError otherwise."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise TocError(f"malformed TOC: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("mediaType") != TOC_MEDIA_TYPE:
        raise TocError(f"not a layer TOC ({TOC_MEDIA_TYPE})")
    if doc.get("layer") != layer or doc.get("size") != blob_size:
        raise TocError(f"the TOC is not that of layer {layer} ({blob_size} bytes)")
    members: list[Member] = []
    raw_members, raw_entries = doc.get("members"), doc.get("entries")
    if not isinstance(raw_members, list) or not isinstance(raw_entries, list) \
            or len(raw_entries) > _MAX_ENTRIES:
        raise TocError("malformed TOC: members and entries must be lists")
    coff = uoff = 0
    for m in raw_members:
        if not (isinstance(m, list) and len(m) == 5 and all(type(v) is int for v in m[:4])
                and isinstance(m[4], str) and len(m[4]) == 64):
            raise TocError(f"malformed TOC member {m!r}")
        member = Member(*m)
        if member.coff != coff or member.uoff != uoff or not 0 < member.clen <= MAX_MEMBER \
                or not 0 <= member.ulen <= MAX_MEMBER or coff + member.clen > blob_size:
            raise TocError(f"TOC member {m!r} does not follow the one before it inside "
                           f"the blob, or is larger than {MAX_MEMBER >> 20} MiB")
        members.append(member)
        coff, uoff = coff + member.clen, uoff + member.ulen
    if coff != blob_size:
        raise TocError("the TOC's members do not cover the blob")
    return Toc(layer, blob_size, tuple(members),
               tuple(_entry(e, uoff) for e in raw_entries))
