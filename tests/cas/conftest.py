from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cas import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "store")
    yield s
    await s.close()
