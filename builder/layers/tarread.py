"""Reading an untrusted tar stream in one pass: its entries, where tarfile's parser
fails with a ValueError on a malformed header (a GNU sparse map it cannot read, ...),
as LayerFormatErrors, and its digest as it is read (what a diff_id is the digest of);
an entry's exact mtime, and why its name cannot be applied."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from typing import IO

from cas import Digest

from .errors import LayerFormatError

__all__ = ["Digesting", "entry_mtime_ns", "name_too_long", "open_tar", "tar_members"]


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


def entry_mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds, from its pax record's decimal digits where it has
    one, as Go's tar reader takes them: tarfile's float has no room for 19 digits
    (``1700000000.999999999`` would be the next second)."""
    whole, _, frac = member.pax_headers.get("mtime", "").partition(".")
    digits = whole.removeprefix("-")
    if digits.isascii() and digits.isdigit() and frac.isascii() and (frac.isdigit() or not frac):
        ns = int(digits) * 1_000_000_000 + int(frac[:9].ljust(9, "0"))
        return -ns if whole.startswith("-") else ns
    return int(member.mtime * 1_000_000_000)


def name_too_long(member: tarfile.TarInfo) -> str:
    """ENAMETOOLONG from ``member`` explained (Linux's NAME_MAX and PATH_MAX)."""
    name = next((p for p in f"{member.name}/{member.linkname}".split("/")
                 if len(os.fsencode(p)) > 255), None)
    what = ("its path or link target is over 4096 bytes" if name is None
            else f"its name {name[:40]!r}... is {len(os.fsencode(name))} bytes long")
    return (f"layer entry {member.name[:200]!r} cannot be applied: {what}, and Linux file "
            "systems allow at most 255 bytes per name (4096 per path); "
            "change the archive or image so that its names fit")
