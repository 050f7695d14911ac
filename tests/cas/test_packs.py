"""The suite every pack backend must pass."""

from pathlib import Path

import pytest

from cas.errors import StoreCorrupt
from cas.packs import FilesystemPacks, MemoryPacks, PackBackend


@pytest.fixture(params=["filesystem-direct", "filesystem-buffered", "memory", "radosgw"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> PackBackend:
    if request.param == "radosgw":
        from cas.pack_s3 import S3Packs

        return S3Packs(request.getfixturevalue("s3_location"))
    if request.param == "filesystem-direct":
        return FilesystemPacks(tmp_path / "packs")
    if request.param == "filesystem-buffered":
        return FilesystemPacks(tmp_path / "packs", direct=False)
    return MemoryPacks()


def test_append_returns_offsets_and_reads_back(backend: PackBackend) -> None:
    w = backend.create("aa11")
    assert w.append(b"hello") == 0
    assert w.append(memoryview(b" world")) == 5
    w.sync()
    assert w.size == 11
    assert backend.read("aa11", 6, 5) == b"world"
    assert backend.size("aa11") == 11
    w.close()


def test_append_many_appends_in_order_and_returns_each_offset(backend: PackBackend) -> None:
    import os

    w = backend.create("ab12")
    w.append(b"head")
    big = os.urandom(3 << 20)
    parts = [memoryview(big)[: 1 << 20], b"x" * 10, memoryview(bytearray(big))[1 << 20 :]]
    parts += [bytes([i % 256]) * (i % 7 + 1) for i in range(1500)]  # more than one pwritev takes
    offsets = w.append_many(parts)
    assert offsets[0] == 4 and offsets[1] == 4 + (1 << 20) and offsets[2] == offsets[1] + 10
    assert w.size == offsets[-1] + len(parts[-1])
    w.sync()
    for part, at in zip(parts, offsets):
        assert backend.read("ab12", at, len(part)) == bytes(part)
    w.close()


def test_names_list_every_pack(backend: PackBackend) -> None:
    for n in ("bb22", "aa11"):
        backend.create(n).close()
    assert backend.names() == ["aa11", "bb22"]


def test_short_or_missing_reads_are_corruption(backend: PackBackend) -> None:
    w = backend.create("cc33")
    w.append(b"abc")
    w.sync()
    with pytest.raises(StoreCorrupt, match="short"):
        backend.read("cc33", 1, 10)
    with pytest.raises(StoreCorrupt, match="missing"):
        backend.read("dd44", 0, 1)


def test_open_append_truncates_to_the_checkpoint(backend: PackBackend) -> None:
    w = backend.create("ee55")
    w.append(b"durable")
    w.append(b"lost-after-crash")
    w.sync()
    w.close()
    w2 = backend.open_append("ee55", 7)
    assert w2.append(b"!") == 7
    w2.sync()
    assert backend.read("ee55", 0, 8) == b"durable!"
    assert backend.size("ee55") == 8


def test_appends_of_every_size_read_back_after_sync(backend: PackBackend) -> None:
    import random

    rnd = random.Random(5)
    w = backend.create("ab12")
    written = bytearray()
    for n in [0, 1, 4095, 4096, 4097, (2 << 20) - 3, 5 << 20, 17, 100000]:
        data = rnd.randbytes(n)
        assert w.append(data) == len(written)
        written += data
        if n % 2:
            w.sync()
    w.sync()
    assert w.size == len(written) == backend.size("ab12")
    assert backend.read("ab12", 0, len(written)) == bytes(written)
    # Reopened mid-block, appending continues exactly where the pack ends.
    w.close()
    w2 = backend.open_append("ab12", len(written) - 10)
    w2.append(b"0123456789abc")
    w2.sync()
    assert backend.read("ab12", len(written) - 12, 15) == bytes(written[-12:-10]) + b"0123456789abc"


def test_free_keeps_other_ranges_and_delete_is_idempotent(backend: PackBackend) -> None:
    w = backend.create("ff66")
    w.append(b"a" * 8192)
    w.append(b"b" * 8192)
    w.sync()
    backend.free("ff66", 0, 8192)
    assert backend.read("ff66", 8192, 8192) == b"b" * 8192
    backend.delete("ff66")
    backend.delete("ff66")
    assert backend.size("ff66") is None
    assert "ff66" not in backend.names()


def test_filesystem_free_punches_a_hole(tmp_path: Path) -> None:
    packs = FilesystemPacks(tmp_path)
    w = packs.create("abcd")
    w.append(b"x" * (4 << 20))
    w.sync()
    before = packs.allocated()
    packs.free("abcd", 0, 2 << 20)
    assert packs.allocated() <= before - (1 << 20)
    assert packs.size("abcd") == 4 << 20


def test_pack_names_cannot_escape(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FilesystemPacks(tmp_path).path("../etc")


def test_the_caller_may_reuse_its_buffer_once_append_returns(backend: PackBackend) -> None:
    import os

    w = backend.create("ba98")
    buf = bytearray(os.urandom(3 << 20))
    expected = b""
    for _ in range(4):  # 12 MiB: more than one S3 part
        w.append_many([memoryview(buf)[: 1 << 20], memoryview(buf)[1 << 20 :]])
        expected += bytes(buf)
        buf[:] = os.urandom(len(buf))  # as the cutter refills its buffer
    w.sync()
    assert backend.read("ba98", 0, len(expected)) == expected
    w.close()
