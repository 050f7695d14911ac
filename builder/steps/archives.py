"""What ``ADD`` unpacks: a local file whose content is a tar archive, plain or
compressed (gzip, bzip2, xz, zstd), told by its content as BuildKit does, not by its name."""

from __future__ import annotations

import bz2
import io
import lzma
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from ..layers.inflate import Gunzip, InflateError

__all__ = ["COMPRESSED_MAGIC", "is_archive", "is_tar_block", "open_archive"]

#: gzip, bzip2, xz, zstd: how a compressed stream begins.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
_MAGIC = COMPRESSED_MAGIC


def is_archive(path: Path) -> bool:
    """Whether ``ADD`` unpacks ``path``: as BuildKit, when its first 512 bytes, once
    decompressed (gzip, bzip2, xz, zstd or none), are a valid tar header. Anything else
    (``data.json.gz``, a file merely named ``.tar``) is copied as it is."""
    try:
        with open_archive(path) as src:
            head = src.read(tarfile.BLOCKSIZE)
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error, InflateError,
            zstandard.ZstdError):
        return False
    return is_tar_block(head)


def is_tar_block(head: bytes) -> bool:
    """Whether ``head`` (a stream's first 512 bytes) is a valid tar header (ustar, GNU
    or v7), as BuildKit tells an archive."""
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def open_archive(path: Path) -> BinaryIO:
    """``path``'s bytes, decompressed when they start with a gzip, bzip2, xz or zstd
    magic number."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_MAGIC[1]):
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if head.startswith(_MAGIC[2]):
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if head.startswith(_MAGIC[0]):  # ISA-L's inflate (builder.layers.inflate), read ahead
        return cast(BinaryIO, io.BufferedReader(
            cast("io.RawIOBase", Gunzip(filename=str(path), mode="rb")), 1 << 20))
    if head.startswith(_MAGIC[3]):
        return zstandard.ZstdDecompressor().stream_reader(
            open(path, "rb"), read_across_frames=True, closefd=True)
    return open(path, "rb")
