"""A shared store restored into another bucket or prefix (docs/deployment.md, "Backups"):
the metadata database records where its packs live, so a restored database refuses the
new location until ``pybuild storage init --moved`` records it, which it does only once
every pack the database names is there."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from cas import StoreConfig
from cas.open import open_store
from cas.s3_location import S3Location, S3LocationError
from testkit.ceph import RadosGateway
from testkit.postgres import PostgresServer


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run([sys.executable, "-m", "builder", "storage", *args], capture_output=True,
                          text=True, timeout=300, env=env, check=False)


def _copy(gw: RadosGateway, src: S3Location, dst: S3Location) -> None:
    s3 = gw.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=src.bucket, Prefix=src.prefix):
        for obj in page.get("Contents", []):
            s3.copy_object(Bucket=dst.bucket, Key=dst.prefix + obj["Key"][len(src.prefix):],
                           CopySource={"Bucket": src.bucket, "Key": obj["Key"]})


async def test_a_restore_into_another_prefix_is_recorded_with_moved(
        postgres: PostgresServer, radosgw: RadosGateway, s3_location: S3Location, tmp_path: Path) -> None:
    name = f"moved_{uuid.uuid4().hex[:12]}"
    database = postgres.create_database(name)
    data = os.urandom(3 << 20)
    async with await open_store(StoreConfig.at(tmp_path / "a", database=database, migrate=True)
                                .with_packs_in(s3_location)) as a:
        digest = (await a.put(data)).digest
    # the backup, restored: a copy of the database, the packs copied to a new prefix
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}_r" TEMPLATE "{name}"')
    restored = postgres.dsn(f"{name}_r")
    new = replace(s3_location, prefix=s3_location.prefix + "restored/")
    empty = replace(s3_location, prefix=s3_location.prefix + "empty/")
    _copy(radosgw, s3_location, new)

    with pytest.raises(S3LocationError, match="record it: `pybuild storage init --database URL"):
        await open_store(StoreConfig.at(tmp_path / "b", database=restored).with_packs_in(new))

    lacking = _cli("init", "--storage", str(tmp_path / "c"), "--database", restored,
                   "--packs", empty.to_url(keys=True), "--moved")
    assert lacking.returncode == 1
    assert f"{empty} lacks 1 of the 1 packs this store's metadata names" in lacking.stderr
    no_database = _cli("init", "--storage", str(tmp_path / "c"), "--packs", new.to_url(keys=True),
                       "--moved")
    assert no_database.returncode == 2 and "--moved changes where" in no_database.stderr

    moved = _cli("init", "--storage", str(tmp_path / "c"), "--database", restored,
                 "--packs", new.to_url(keys=True), "--moved")
    assert moved.returncode == 0, moved.stderr
    assert f"packs moved: {s3_location} -> {new}" in moved.stdout
    async with await open_store(StoreConfig.at(tmp_path / "d", database=restored)
                                .with_packs_in(new)) as d:
        assert await d.read_bytes(digest) == data
    # the original keeps its own location
    async with await open_store(StoreConfig.at(tmp_path / "e", database=database)
                                .with_packs_in(s3_location)) as e:
        assert await e.read_bytes(digest) == data
