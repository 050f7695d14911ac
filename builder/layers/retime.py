"""Clamping a written layer's file times to ``SOURCE_DATE_EPOCH`` afterwards.

The build cache holds each step's layer with its files' own times (as BuildKit's cache
does): whether a step hits does not depend on the epoch. The image gets the layer with its
times clamped (BuildKit's ``rewrite-timestamp``), made here from the cached layer by
rewriting its tar headers: :func:`retime_tar` turns the tar stream that
:func:`builder.layers.tarwriter.iter_tar` wrote without an epoch into, byte for byte, the
one it writes for that changeset with ``source_date_epoch`` (every mtime later than the
epoch becomes the epoch, whiteouts get the epoch; headers are written again by the same
code, so pax records come and go as the new times need). File contents pass through
untouched. :func:`retime_layer` does it for a compressed layer blob, giving the layer
:func:`builder.layers.chunked.write_layer` writes with that epoch (same frames, same digest).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from .chunked import MEDIA_TYPE_ZSTD, LayerBlob, write_frames
from .inflate import Gunzip
from .tarwriter import BLOCK_SIZE, _header

__all__ = ["RetimeError", "retime_layer", "retime_tar"]

_READ = 1 << 20
_WHITEOUT = b".wh."


class RetimeError(ValueError):
    """The layer is not a tar stream as pybuild's layer writer makes it."""


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    while len(data) < n:
        more = src.read(n - len(data))
        if not more:
            raise RetimeError("the layer's tar stream ends inside an entry")
        data += more
    return data


def _number(field: bytes) -> int:
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise RetimeError(f"bad octal field {field!r} in a tar header") from None


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            raise RetimeError("a malformed pax record")
        end = pos + int(data[pos:space])
        key, _, value = data[space + 1:end - 1].partition(b"=")
        records[key] = value
        pos = end
    return records


def _field(pax: dict[bytes, bytes], key: bytes, header: bytes, start: int, width: int) -> int:
    value = pax.get(key)
    return int(value) if value is not None else _number(header[start:start + width])


def retime_tar(src: BinaryIO, epoch: int) -> Iterator[bytes]:
    """The tar stream read from ``src`` (written without an epoch) with its times clamped
    to ``epoch``, in pieces of at most 1 MiB. RetimeError: ``src`` is not such a stream."""
    pax: dict[bytes, bytes] = {}
    while True:
        header = _read_exact(src, BLOCK_SIZE)
        if header == b"\0" * BLOCK_SIZE:
            yield header * 2  # the writer's end of archive
            return
        typeflag = header[156:157]
        size = _field(pax, b"size", header, 124, 12)
        if typeflag == b"x":
            pax = _pax_records(_read_exact(src, size))
            _read_exact(src, -size % BLOCK_SIZE)
            continue
        name = pax.get(b"path", header[:100].split(b"\0", 1)[0])
        mtime = _field(pax, b"mtime", header, 136, 12)
        whiteout = name.rstrip(b"/").rpartition(b"/")[2].startswith(_WHITEOUT)
        yield _header(
            name, typeflag, mode=_number(header[100:108]),
            uid=_field(pax, b"uid", header, 108, 8), gid=_field(pax, b"gid", header, 116, 8),
            size=size, mtime=epoch if whiteout else min(mtime, epoch),
            linkname=pax.get(b"linkpath", header[157:257].split(b"\0", 1)[0]),
            devmajor=_number(header[329:337]), devminor=_number(header[337:345]),
            xattrs=tuple((k[len(b"SCHILY.xattr."):].decode("utf-8", "surrogateescape"), v)
                         for k, v in pax.items() if k.startswith(b"SCHILY.xattr.")))
        pax = {}
        left = size + (-size % BLOCK_SIZE) if typeflag in (b"0", b"\0", b"7") else 0
        while left:
            data = _read_exact(src, min(_READ, left))
            left -= len(data)
            yield data


def retime_layer(blob: BinaryIO, media_type: str, epoch: int, out: BinaryIO) -> LayerBlob:
    """Write to ``out`` the layer ``blob`` (of ``media_type``, written by pybuild without
    an epoch) with its file times clamped to ``epoch``, compressed the same way."""
    if media_type == MEDIA_TYPE_ZSTD:
        import zstandard

        tar: BinaryIO = zstandard.ZstdDecompressor().stream_reader(
            blob, read_across_frames=True)
        compression = "zstd"
    else:
        tar, compression = Gunzip(fileobj=blob), "gzip"  # type: ignore[assignment]
    with tar:
        return write_frames(retime_tar(tar, epoch), out, compression=compression)
