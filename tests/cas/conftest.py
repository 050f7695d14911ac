import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cas import Store
from cas.s3_location import S3Location
from testkit.ceph import RadosGateway

# The bucket every S3 test shares; each test works under a prefix of its own.
BUCKET = "pybuild-tests"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store")
    yield s
    await s.close()


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
