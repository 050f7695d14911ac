from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cas import Store

# The S3 fixtures (radosgw, s3_location) are session-wide: tests/conftest.py.


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store")
    yield s
    await s.close()
