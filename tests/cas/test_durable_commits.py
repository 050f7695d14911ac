"""Commits that something irrevocable follows are synced first.

meta.db runs SQLite's WAL with ``synchronous=NORMAL``: a commit reaches the log's page
cache, and the log is synced only at checkpoints, so a power loss may take back the last
commits. So:

- GC releases pack space only once the transaction that gave it up is on disk: were a
  hole punched (or a pack deleted) first, the store would come back naming pieces whose
  bytes are gone;
- ``Store.link_all`` (a manifest's blobs linked to its repository) returns only once the
  links are on disk: the registry then records the manifest in a database of its own,
  which must not outlive them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cas import Store
from cas.pack_files import FilesystemPacks
from cas.sqlite_meta import SqliteMetadata


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What happens in order: ``commit`` (a GC transaction that trashes pack space),
    ``sync <file>`` (an fsync of one of meta.db's files), ``release`` (pack space given
    back: a hole punched or a pack deleted)."""
    seen: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "meta.db" in name:
            seen.append(f"sync {Path(name).name}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for name in ("collect_pieces", "collect_blobs"):
        real = getattr(SqliteMetadata, name)

        def counted(self: SqliteMetadata, *args: Any, _real: Callable[..., Any] = real,
                    **kw: Any) -> Any:
            out = _real(self, *args, **kw)
            seen.append("commit")
            return out

        monkeypatch.setattr(SqliteMetadata, name, counted)
    for name in ("free", "delete"):
        real = getattr(FilesystemPacks, name)

        def released(self: FilesystemPacks, *args: Any,
                     _real: Callable[..., Any] = real) -> Any:
            seen.append("release")
            return _real(self, *args)

        monkeypatch.setattr(FilesystemPacks, name, released)
    return seen


async def test_gc_syncs_the_log_before_it_releases_pack_space(
        tmp_path: Path, events: list[str]) -> None:
    a = os.urandom(6 << 20)
    async with await Store.open(tmp_path / "s") as store:
        first = await store.put(a, link="a")
        await store.put(a[:2 << 20] + os.urandom(1 << 20), link="b")  # a's pack stays, holed
        gone = await store.put(os.urandom(3 << 20), link="c")  # its pack goes whole
        await store.unlink("a", first.digest)
        await store.unlink("c", gone.digest)
        events.clear()
        await store.gc(grace=0)
        assert "release" in events, events
        last_commit = max(i for i, e in enumerate(events) if e == "commit")
        first_release = events.index("release")
        assert last_commit < first_release
        assert "sync meta.db-wal" in events[last_commit:first_release], events
        assert (await store.fsck()).ok


async def test_link_all_returns_once_its_links_are_on_disk(
        tmp_path: Path, events: list[str]) -> None:
    async with await Store.open(tmp_path / "s") as store:
        digests = [(await store.put(os.urandom(1000 + n))).digest for n in range(3)]
        events.clear()
        assert await store.link_all("repo:app", digests) == digests
        assert events == ["sync meta.db-wal", "sync meta.db"], events
