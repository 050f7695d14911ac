"""A local image's record is written only once what it names is on disk.

``images.db`` syncs every commit (SQLite's default), the store's ``meta.db`` syncs its
log only at checkpoints (``synchronous=NORMAL``): after a power loss the image's name
could survive while the commits of its manifest and links were taken back, and
``pybuild images`` would list an image that cannot be read. So the store's commits are
synced before the record is written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cas.sqlite_meta import SqliteMetadata
from registry.client.image_store import ImageStore

from .helpers import simple_image, store_image


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        seen.append(f"sync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for name in ("commit_blob", "link"):
        real = getattr(SqliteMetadata, name)

        def committed(self: SqliteMetadata, *args: Any, _real: Callable[..., Any] = real,
                      **kw: Any) -> Any:
            out = _real(self, *args, **kw)
            seen.append("store commit")
            return out

        monkeypatch.setattr(SqliteMetadata, name, committed)
    real_sql = ImageStore._sql

    async def sql(self: ImageStore, query: str, *args: Any) -> Any:
        if query.startswith("INSERT OR REPLACE INTO images"):
            seen.append("image named")
        return await real_sql(self, query, *args)

    monkeypatch.setattr(ImageStore, "_sql", sql)
    return seen


async def test_the_store_is_synced_before_an_image_is_named(
        tmp_path: Path, events: list[str]) -> None:
    async with await ImageStore.open(tmp_path / "local") as images:
        await store_image(images, "localhost/app:1", simple_image(53))
        assert await images.resolve("localhost/app:1") is not None
    named = events.index("image named")
    last_commit = max(i for i, e in enumerate(events[:named]) if e == "store commit")
    assert "sync meta.db-wal" in events[last_commit:named], events
