"""``pybuild storage retention --config`` on a deployment whose config names the packs
(``storage.s3`` with its keys, as docs/deployment.md's replicas have it) opens those packs
with those keys, as ``pybuild serve`` does with the same file, from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from cas import StoreConfig
from cas.open import open_store
from cas.s3_location import S3Location
from testkit.postgres import PostgresServer


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYBUILD_"))}
    return subprocess.run([sys.executable, "-m", "builder", "storage", *args], capture_output=True,
                          text=True, timeout=300, env=env, check=False)


async def test_retention_takes_the_packs_and_keys_of_its_config(
        postgres: PostgresServer, s3_location: S3Location, tmp_path: Path) -> None:
    database = postgres.create_database(f"ret_{uuid.uuid4().hex[:12]}")
    assert _cli("migrate", "--database", database).returncode == 0
    async with await open_store(StoreConfig.at(tmp_path / "replica", database=database)
                                .with_packs_in(s3_location)) as store:
        await store.put(os.urandom(1 << 20))
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\nstorage:\n  s3:\n"
        f"    accesskey: {s3_location.access_key}\n    secretkey: {s3_location.secret_key}\n"
        f"    regionendpoint: http://{s3_location.endpoint}\n    bucket: {s3_location.bucket}\n"
        f"    rootdirectory: /{s3_location.prefix}\n"
        f"database:\n  enabled: true\n  url: {database}\n")
    done = _cli("retention", "--config", str(config), "--storage", str(tmp_path / "cron"))
    assert done.returncode == 0, done.stderr
    assert "deleted 0 tag(s), 0 manifest(s)" in done.stdout
