"""builder.layers.inflate: ISA-L's inflate where it is installed (pyproject requires it),
with zlib's behaviour: members end where zlib's do, bad input raises InflateError."""

from __future__ import annotations

import gzip
import os

import pytest

from builder.layers import inflate


def test_isa_l_does_the_inflating() -> None:
    from isal import igzip, isal_zlib

    assert inflate.Gunzip is igzip.IGzipFile
    assert type(inflate.gunzip_member()) is type(isal_zlib.decompressobj(inflate.GUNZIP))


def test_a_member_decodes_as_zlib_decodes_it() -> None:
    first = b"".join(os.urandom(64) * 50 for _ in range(40))
    second = gzip.compress(b"next member")
    dec = inflate.gunzip_member()
    assert dec.decompress(gzip.compress(first, mtime=0) + second) == first
    assert dec.eof and dec.unused_data == second
    assert len(inflate.gunzip_member().decompress(gzip.compress(first), 1000)) == 1000


def test_a_damaged_member_raises_inflate_error() -> None:
    data = bytearray(gzip.compress(os.urandom(5000)))
    data[20] ^= 0xFF
    with pytest.raises(inflate.InflateError):
        inflate.gunzip_member().decompress(bytes(data))


def test_add_unpacks_a_tar_gz_through_isa_l(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import io
    import tarfile

    from isal import igzip

    from builder.steps.archives import is_archive, open_archive

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"hello\n"))
    (tmp_path / "a.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"not a tar"))
    (tmp_path / "broken.tar.gz").write_bytes(gzip.compress(buf.getvalue())[:40])
    assert is_archive(tmp_path / "a.tar.gz")
    assert not is_archive(tmp_path / "notes.gz") and not is_archive(tmp_path / "broken.tar.gz")
    with open_archive(tmp_path / "a.tar.gz") as src:
        assert isinstance(src.raw, igzip.IGzipFile)  # type: ignore[attr-defined]
        assert src.read() == buf.getvalue()
