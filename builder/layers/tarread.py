"""Reading an untrusted tar stream in one pass: its entries, where tarfile's parser
fails with a ValueError on a malformed header (a GNU sparse map it cannot read, ...),
as LayerFormatErrors, and its digest as it is read (what a diff_id is the digest of)."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from typing import IO

from cas import Digest

from .errors import LayerFormatError

__all__ = ["Digesting", "open_tar", "tar_members"]


class Digesting:
    """The tar stream ``inner``, hashed as it is read (what a diff_id is the digest of)."""

    def __init__(self, inner: IO[bytes], diff_id: Digest) -> None:
        self.inner = inner
        self.hasher = diff_id.hasher()

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.hasher.update(data)
        return data


def _malformed(exc: ValueError) -> LayerFormatError:
    return LayerFormatError(f"layer has a malformed tar header ({exc}); the layer is "
                            "corrupt or was not written by a tar tool")


def open_tar(stream: IO[bytes]) -> tarfile.TarFile:
    """``stream`` as a tar read in one pass (tarfile reads the first header at once)."""
    try:
        return tarfile.open(fileobj=stream, mode="r|", errors="surrogateescape")
    except ValueError as exc:
        raise _malformed(exc) from exc


def tar_members(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The entries of ``tf``; a header tarfile's parser fails on with a ValueError (a
    GNU sparse map it cannot read, ...) is a LayerFormatError."""
    entries = iter(tf)
    while True:
        try:
            member = next(entries)
        except StopIteration:
            return
        except ValueError as exc:
            raise _malformed(exc) from exc
        yield member
