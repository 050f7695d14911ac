"""``open_store(StoreConfig)``: the one way every command opens its store."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from cas import Store, StoreConfig, open_store
from cas.errors import StoreClosed
from cas.meta import Metadata
from cas.packs import FilesystemPacks, MemoryPacks, PackBackend
from cas.sqlite_meta import SqliteMetadata

ROOT = Path(__file__).resolve().parents[2]


async def test_open_store_creates_the_layout_and_reopens_what_it_stored(tmp_path: Path) -> None:
    config = StoreConfig(tmp_path / "s")
    async with await open_store(config) as store:
        info = await store.put(b"x" * (1 << 20))
    assert {p.name for p in (tmp_path / "s").iterdir()} >= {"meta.db", "packs", "ingests"}
    async with await open_store(config) as store:  # a config opens as often as needed
        assert await store.read_bytes(info.digest) == b"x" * (1 << 20)


def test_at_none_is_the_default_storage_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBUILD_STORAGE", str(tmp_path / "env"))
    assert StoreConfig.at(None).root == tmp_path / "env"
    assert StoreConfig.at(tmp_path / "given").root == tmp_path / "given"
    assert StoreConfig.at("rel", workers=2, direct_io=False) == StoreConfig(Path("rel"), 2, False)


async def test_direct_io_chooses_how_the_default_packs_are_written(tmp_path: Path) -> None:
    for direct in (True, False):
        async with await open_store(StoreConfig(tmp_path / str(direct), direct_io=direct)) as store:
            assert isinstance(store.packs, FilesystemPacks) and store.packs.direct is direct


async def test_the_configured_backends_are_used_and_closed_with_the_store(tmp_path: Path) -> None:
    made: list[SqliteMetadata] = []
    packs = MemoryPacks()

    def metadata(root: Path) -> Metadata:
        made.append(SqliteMetadata(root / "elsewhere.db"))
        return made[-1]

    def pack_backend(root: Path) -> PackBackend:
        return packs

    store = await open_store(StoreConfig(tmp_path / "s", metadata=metadata, packs=pack_backend))
    data = os.urandom(1 << 20)  # incompressible: stored in a pack, not inline
    info = await store.put(data)
    assert store.meta is made[0] and packs.names()  # the pieces went to the memory packs
    assert not (tmp_path / "s" / "meta.db").exists() and not (tmp_path / "s" / "packs").exists()
    assert await store.read_bytes(info.digest) == data
    await store.close()
    with pytest.raises(StoreClosed):
        made[0].blob(str(info.digest))


async def test_a_failing_pack_backend_leaves_nothing_open(tmp_path: Path) -> None:
    made: list[SqliteMetadata] = []

    def metadata(root: Path) -> Metadata:
        made.append(SqliteMetadata(root / "meta.db"))
        return made[-1]

    def broken(root: Path) -> PackBackend:
        raise RuntimeError("no packs today")

    with pytest.raises(RuntimeError, match="no packs today"):
        await open_store(StoreConfig(tmp_path / "s", metadata=metadata, packs=broken))
    with pytest.raises(StoreClosed):
        made[0].blob("sha256:" + "0" * 64)


async def test_store_open_still_takes_backend_instances(tmp_path: Path) -> None:
    packs = MemoryPacks()
    async with await Store.open(tmp_path / "s", packs=packs, workers=2) as store:
        await store.put(os.urandom(1 << 20))
        assert store.packs is packs and packs.names()


def test_every_command_opens_its_store_with_open_store() -> None:
    # Store.open stays for tests and embedding; the commands all go through open_store.
    offenders = []
    for package in ("cas", "registry", "builder", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "cas" / "store.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr == "open"
                        and isinstance(node.value, ast.Name) and node.value.id == "Store"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
