"""What a test asks of a local store directly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cas import Digest, StoreConfig, open_store


def stored(storage: Path, digests: list[str]) -> list[str]:
    """Those of ``digests`` that the store in ``storage`` holds."""
    async def check() -> list[str]:
        store = await open_store(StoreConfig(storage))
        try:
            return [d for d in digests if await store.stat(Digest.parse(d)) is not None]
        finally:
            await store.close()
    return asyncio.run(check())
