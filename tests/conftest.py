"""Shared test set-up: subprocesses run this checkout's code, not an installed copy."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `testkit`, `tests.helpers` and this checkout's packages import however pytest was started.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

import testkit.tools  # noqa: E402 - needs the checkout on sys.path (above)
from cas.s3_location import S3Location  # noqa: E402
from testkit.ceph import BUCKET, RadosGateway  # noqa: E402
from testkit.docker_engine import DockerEngine, find_running_engine  # noqa: E402
from testkit.docker_engine import docker_engine as running_docker_engine  # noqa: E402
from testkit.postgres import PostgresServer, postgres_server  # noqa: E402


def _skip_or_fail(message: str) -> NoReturn:
    """A missing tool skips the test locally and fails it in CI (see testkit.tools)."""
    if testkit.tools.in_ci():
        pytest.fail(f"{message}. CI is set, so a missing tool is an error, not a skip.")
    pytest.skip(message)


testkit.tools.on_missing = _skip_or_fail


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A Docker engine: the host's if it answers, else a private dockerd (stopped at the end).

    Every test that needs an engine takes this fixture, so a machine with no daemon running
    (a fresh CI runner) still runs them all against one private daemon.
    """
    testkit.tools.require_tool("docker")
    running = find_running_engine()
    if running is not None:
        yield running
        return
    testkit.tools.require_tool("dockerd")
    with running_docker_engine() as engine:
        yield engine


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test session (testkit.postgres): tests take a fresh
    database each with ``create_database``."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def radosgw() -> Iterator[RadosGateway]:
    """A private Ceph cluster with a RADOS Gateway (testkit.ceph), for the whole session,
    with the bucket :data:`BUCKET` made."""
    gw = RadosGateway()
    gw.start()
    try:
        gw.create_bucket(BUCKET)
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def s3_location(radosgw: RadosGateway) -> S3Location:
    """A fresh prefix in the shared bucket, as an S3Location with the gateway's keys."""
    c = radosgw.credentials
    assert c is not None
    return S3Location(c.endpoint.removeprefix("http://"), BUCKET, f"t{secrets.token_hex(6)}/",
                      c.access_key, c.secret_key, c.region, secure=False, part_size=5 << 20)
