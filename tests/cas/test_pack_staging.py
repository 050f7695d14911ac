"""O_DIRECT pack writers take their staging buffers from a pool and give them back when
closed: the next writer starts with buffers already faulted in, and its pack holds only
its own bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cas import pack_files
from cas.pack_files import STAGING, FilesystemPacks, _StagingPool


def _direct_writer(packs: FilesystemPacks, name: str, where: Path) -> pack_files._DirectWriter:
    """A fresh pack writer, after emptying the pool; it must be an O_DIRECT one."""
    STAGING.clear()
    writer = packs.create(name)
    if not isinstance(writer, pack_files._DirectWriter):
        writer.close()
        raise AssertionError(f"{where} refuses O_DIRECT: this test needs a disk")
    return writer


def test_the_pool_keeps_at_most_keep_buffers_and_clear_unmaps_them() -> None:
    pool = _StagingPool(keep=2)
    bufs = [pool.take() for _ in range(3)]
    assert len({id(b) for b in bufs}) == 3
    for b in bufs:
        pool.give(b)
    assert bufs[2].closed  # past keep: unmapped at once
    again = pool.take()
    assert again is bufs[1] and not again.closed
    pool.clear()
    assert bufs[0].closed
    assert pool.take() is not bufs[0]


def test_a_closed_direct_writers_buffers_serve_the_next_writer(tmp_path: Path) -> None:
    packs = FilesystemPacks(tmp_path / "packs")
    first = _direct_writer(packs, "aa01", tmp_path)
    used = {id(b) for b in first._bufs}
    data = os.urandom((5 << 20) + 123)  # fills and writes several staging buffers
    first.append(data)
    first.sync()
    first.close()
    second = packs.create("aa02")
    assert {id(b) for b in second._bufs} == used
    second.append(b"short")
    second.sync()
    second.close()
    # The second pack is only its own bytes (the padding written from a reused buffer
    # is cut off), and the first one is intact.
    assert packs.size("aa02") == 5 and packs.read("aa02", 0, 5) == b"short"
    assert packs.read("aa01", 0, len(data)) == data


def test_the_padding_of_a_reused_buffer_is_zeros_before_the_file_is_cut(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between the padded write and the truncate keeps the padding: it must hold
    none of the bytes another pack left in the reused buffer."""
    packs = FilesystemPacks(tmp_path / "packs")
    first = _direct_writer(packs, "bb01", tmp_path)
    first.append(b"\xee" * (len(first._bufs[0]) * len(first._bufs) + 8192))  # all dirty
    first.sync()
    first.close()
    second = packs.create("bb02")
    monkeypatch.setattr(pack_files.os, "ftruncate", lambda fd, size: None)  # the "crash"
    second.append(b"short")
    second.sync()
    (path,) = [p for p in (tmp_path / "packs").rglob("bb02*") if p.is_file()]
    on_disk = path.read_bytes()  # what a crash here would leave
    monkeypatch.undo()
    second.close()
    assert on_disk[:5] == b"short"
    assert b"\xee" not in on_disk[5:]
