"""The PostgreSQL metadata database runs out of disk: pushes are refused with a clear
507, nothing half-stored is visible, fsck stays clean, and pushes work again once space
is freed.

The test runs a PostgreSQL server of its own whose database lives in a tablespace on a
small tmpfs (needs root), which it then fills: the server's WAL stays on the ordinary
disk, so the server itself keeps running (a full WAL disk stops PostgreSQL, which is
not what this is about) and what fills up is the data, as when a database volume fills.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pwd
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cas import Digest
from registry.server import ServerConfig, make_app
from registry.server.state import REGISTRY
from testkit.postgres import PostgresServer, postgres_server
from tests.helpers.disks import fill_up, small_filesystem

from .helpers import error_codes, push_blob

pytestmark = pytest.mark.slow


@pytest.fixture
def full_database() -> Iterator[tuple[str, Path]]:
    """A database in a tablespace on a 24 MiB tmpfs: its URL and the mount point."""
    base = Path(tempfile.mkdtemp(prefix="pbpgfull", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        with small_filesystem(base / "space", "24m") as space, postgres_server() as server:
            owner = pwd.getpwnam("postgres")  # the server's user (as root: testkit.postgres)
            os.chown(space, owner.pw_uid, owner.pw_gid)
            os.chmod(space, 0o700)
            yield _create_in_tablespace(server, space), space
    finally:
        with contextlib.suppress(OSError):
            base.joinpath("space").rmdir()
        base.rmdir()


def _create_in_tablespace(server: PostgresServer, space: Path) -> str:
    import psycopg

    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE tiny LOCATION '{space}'")
        conn.execute("CREATE DATABASE full_disk TABLESPACE tiny")
    return server.dsn("full_disk")


async def _post(client: Any, repo: str, data: bytes) -> Any:
    digest = Digest.of(data)
    return await client.post(
        f"/v2/{repo}/blobs/uploads/?digest={digest}", data=io.BytesIO(data),
        headers={"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"})


async def test_a_full_metadata_database_refuses_pushes_clearly_and_stays_consistent(
        full_database: tuple[str, Path], aiohttp_client: Any, tmp_path: Path) -> None:
    url, space = full_database
    config = dataclasses.replace(ServerConfig(log_access=False), database_url=url,
                                 database_migrate=True)
    client = await aiohttp_client(make_app(config, storage=tmp_path / "storage"))
    store = client.server.app[REGISTRY].store
    kept = os.urandom(3 << 20)
    await push_blob(client, "team/app", kept)
    filler = fill_up(space)

    # A new upload session needs rows nobody had room for: a clear 507, no session left.
    opened = await client.post("/v2/team/app/blobs/uploads/")
    assert opened.status == 507, await opened.text()
    assert await error_codes(opened) == ["UNAVAILABLE"]
    text = await opened.text()
    assert "storage full" in text and "metadata database" in text
    assert await store.list_ingests() == []
    # Blob pushes fail the same way once the tables' pages are used up; never a 500.
    refused: list[bytes] = []
    stored: list[bytes] = []
    for _ in range(40):
        data = os.urandom(4 << 20)
        resp = await _post(client, "team/app", data)
        assert resp.status in (201, 507), await resp.text()
        if resp.status == 507:
            assert "storage full" in await resp.text()
            refused.append(data)
            break
        stored.append(data)
    assert refused, "the metadata database never filled up"
    # Nothing of the refused blob is visible; what was stored reads back; fsck is clean.
    head = await client.head(f"/v2/team/app/blobs/{Digest.of(refused[0])}")
    assert head.status == 404
    for data in [kept, *stored]:
        got = await client.get(f"/v2/team/app/blobs/{Digest.of(data)}")
        assert got.status == 200 and await got.read() == data
    report = await store.fsck()
    assert report.ok, report

    # Space again: the same push goes through.
    filler.unlink()
    resp = await _post(client, "team/app", refused[0])
    assert resp.status == 201, await resp.text()
    assert (await store.fsck()).ok
