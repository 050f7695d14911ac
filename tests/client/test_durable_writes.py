"""What ``pybuild copy`` writes to a layout or an archive is on disk before its name is.

A rename is what makes a blob, ``index.json`` or an archive visible; a power loss after a
rename whose file was never synced can leave the name on an empty or short file, which a
later copy trusts (a blob file that exists is not written again). So every file is synced
before it is renamed into place, as skopeo syncs each blob of an OCI layout."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry.client.copy import CopyOptions, copy_image, parse_endpoint
from registry.client.image_store import ImageStore
from registry.client.progress import Progress
from registry.client.remote import RegistryClient

from .helpers import simple_image, store_image


@pytest.fixture
def renamed_unsynced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """The renames whose source file was not fsynced first (source, destination)."""
    synced: set[tuple[int, int]] = set()
    unsynced: list[tuple[str, str]] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        st = os.fstat(fd)
        synced.add((st.st_dev, st.st_ino))

    def checked(real: Callable[..., None]) -> Callable[..., None]:
        def move(src: str | Path, dst: str | Path, *args: Any, **kw: Any) -> None:
            st = os.stat(src)
            if not os.path.isdir(src) and (st.st_dev, st.st_ino) not in synced:
                unsynced.append((str(src), str(dst)))
            real(src, dst, *args, **kw)
        return move

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", checked(real_replace))
    monkeypatch.setattr(os, "rename", checked(real_rename))
    return unsynced


@pytest.mark.parametrize("dest", ["oci:{dir}/layout:v1", "docker-archive:{dir}/image.tar:x:v1",
                                  "oci-archive:{dir}/image.tar:v1"])
async def test_every_file_is_synced_before_it_is_renamed_into_place(
        tmp_path: Path, client: RegistryClient, dest: str,
        renamed_unsynced: list[tuple[str, str]]) -> None:
    async with await ImageStore.open(tmp_path / "store") as images:
        await store_image(images, "localhost/img:v1", simple_image(41))
        out = tmp_path / "out"
        out.mkdir()
        await copy_image(parse_endpoint("local:localhost/img:v1"),
                         parse_endpoint(dest.format(dir=out)), images, client,
                         Progress("quiet"), CopyOptions())
    assert any(out.iterdir())
    assert renamed_unsynced == []
