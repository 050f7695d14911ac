"""Storage on file systems that lack what image files need (vfat, exFAT, Windows shares:
no symbolic links, no hard links, no Unix permissions): the error says so and how to fix
it, instead of blaming one file of the image."""

from __future__ import annotations

import errno
import io
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest

from builder.extracted import ExtractedLayers
from cas import Digest, StoreConfig, open_store
from cas.errors import StorageFull, StorageUnsupported, missing_features, storage_error


def _layer_with_a_symlink() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("bin")
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
        data = b"#!/bin/sh\n"
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("bin/sh")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tf.addfile(info)
    return buf.getvalue()


def _like_vfat(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the vfat driver answers to a symlink, a hard link and a chmod."""
    def refused(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM), str(args[0]))

    for name in ("symlink", "link", "chmod"):
        monkeypatch.setattr(os, name, refused)


def test_a_linux_file_system_lacks_nothing(tmp_path: Path) -> None:
    assert missing_features(tmp_path) is None
    assert list(tmp_path.iterdir()) == [], "the probe left files behind"


def test_a_vfat_like_file_system_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _like_vfat(monkeypatch)
    assert missing_features(tmp_path) == "symbolic links, hard links or Unix permissions"
    assert list(tmp_path.iterdir()) == [], "the probe left files behind"


async def test_extracting_onto_vfat_says_what_the_file_system_lacks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await open_store(StoreConfig(tmp_path / "store"))
    try:
        info = await store.put(_layer_with_a_symlink())
        snapshots = tmp_path / "store" / "builder" / "snapshots"
        layers = ExtractedLayers(snapshots, store)
        _like_vfat(monkeypatch)
        with pytest.raises(StorageUnsupported) as caught:
            await layers.ensure(Digest.parse("sha256:" + "ef" * 32), info.digest)
        message = str(caught.value)
        for words in ("file system without symbolic links", str(snapshots), "vfat",
                      "ext4", "--storage DIR or PYBUILD_STORAGE"):
            assert words in message, message
        assert list(snapshots.iterdir()) == [], "a half-extracted layer stayed"
    finally:
        await store.close()


def _sqlite_error(code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("disk I/O error")
    exc.sqlite_errorcode = code
    return exc


def test_a_file_system_without_shared_memory_is_named(tmp_path: Path) -> None:
    """SQLite's WAL index (``meta.db-shm``) is a shared memory map: on a file system
    that cannot map it (network, some FUSE ones) SQLite says only "disk I/O error"."""
    typed = storage_error(_sqlite_error(sqlite3.SQLITE_IOERR_SHMOPEN), tmp_path / "meta.db")
    assert isinstance(typed, StorageUnsupported)
    for words in ("without shared memory maps", str(tmp_path / "meta.db"), "write-ahead log",
                  "ext4", "--storage DIR or PYBUILD_STORAGE"):
        assert words in str(typed), str(typed)


def test_a_file_system_that_reports_no_size_is_not_called_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some FUSE file systems (fusefat) answer statfs with 0 blocks, 0 free: that is no
    size, not a full disk."""
    real = os.statvfs(tmp_path)
    no_size = os.statvfs_result((real.f_bsize, real.f_frsize, 0, 0, 0, real.f_files,
                                 real.f_ffree, real.f_favail, real.f_flag, real.f_namemax))
    monkeypatch.setattr(os, "statvfs", lambda path: no_size)
    typed = storage_error(_sqlite_error(sqlite3.SQLITE_IOERR), tmp_path / "meta.db")
    assert not isinstance(typed, StorageFull), str(typed)
