"""Held pieces on the disk are asked for ahead of their hashing, one range per run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from cas import pack_reads
from cas.meta import CODEC_RAW, CODEC_ZSTD, Location
from cas.pack_reads import prefetch_locations


class _Packs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def local_path(self, pack: str) -> Path | None:
        return None if pack == "remote" else self.root / pack


class _Core:
    def __init__(self, root: Path) -> None:
        self.packs = _Packs(root)


def _loc(pack: str | None, offset: int, n: int, codec: int = CODEC_RAW,
         data: bytes | None = None) -> Location:
    return Location(os.urandom(32), n, n, codec, pack, offset, data)


def test_runs_of_pieces_end_to_end_are_one_willneed_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("p1", "p2"):
        (tmp_path / name).write_bytes(bytes(1 << 20))
    calls: list[tuple[str, int, int, int]] = []

    def advise(fd: int, start: int, n: int, what: int) -> None:
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), start, n, what))

    monkeypatch.setattr(pack_reads.os, "posix_fadvise", advise)
    core: Any = _Core(tmp_path)
    prefetch_locations(core, [
        _loc("p1", 0, 100), _loc("p1", 100, 50),       # one run: 0-150
        _loc("p2", 4096, 10),                          # another pack
        _loc("p1", 1000, 24),                          # a gap: a second run in p1
        _loc(None, 0, 5, data=b"hello"),               # inline: nothing to read
        _loc("p1", 2000, 30, codec=CODEC_ZSTD),        # compressed: loaded, not prefetched
        _loc("remote", 0, 10),                         # not on this disk
        _loc("gone", 0, 10),                           # a missing pack: ignored here
    ])
    assert calls == [
        (str(tmp_path / "p1"), 0, 150, os.POSIX_FADV_WILLNEED),
        (str(tmp_path / "p1"), 1000, 24, os.POSIX_FADV_WILLNEED),
        (str(tmp_path / "p2"), 4096, 10, os.POSIX_FADV_WILLNEED),
    ]
