"""What every blob transfer shares, pull and push: :class:`TransferOptions` (part sizes,
windows, checkpoints, retries) and :class:`BlobError`. Both are re-exported by
:mod:`registry.client.pull`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ClientError

if TYPE_CHECKING:  # asyncio is imported by what runs a transfer, not by `pull --help`
    import asyncio

__all__ = ["DEFAULT_JOBS", "BlobError", "TransferOptions", "cancel_all", "gather_or_cancel"]

# Blobs transferred at once, unless told (-j). Docker and containerd fetch three at
# once. On 2 cores four beat six: a pull is CPU-bound here (hashing twice, copying,
# storing), and each more thread adds GIL hand-overs. A cold pull of 525 MB of
# 6,600-piece layers took a median 0.905 s with 3 or 4, 0.95 s with 6; the v2-over-v1
# pull from ``pybuild serve`` 0.535 s with 4 against 0.575 s with 3 or 6.
DEFAULT_JOBS = 4


class BlobError(ClientError):
    """A blob could not be transferred; the message names it and says what to do."""


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """How blobs move. The defaults were chosen with ``python3 -m bench client``."""

    part_size: int = 4 << 20  # one Range request (piece runs are cut at piece boundaries)
    # Whole-blob pulls at least this large use parallel Range parts; below, one stream
    # per blob (several blobs already transfer at once, see CopyOptions.jobs).
    parallel_threshold: int = 64 << 20
    window: int = 8  # Range requests of one blob in flight (parts or missing-piece runs)
    checkpoint_every: int = 32 << 20  # pull: bytes between checkpoints, at least ...
    checkpoint_interval: float = 2.0  # ... and seconds between them
    upload_chunk: int = 16 << 20  # push: one PUT below, PATCH chunks of this size above
    retries: int = 3  # re-requests of a part whose body broke off
    recipes: bool = True

    def __post_init__(self) -> None:
        if self.window < 1 or self.part_size < 1 or self.upload_chunk < 1:
            raise ValueError("window, part_size and upload_chunk must be at least 1")


async def cancel_all(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` and wait until they have ended, their failures retrieved."""
    import asyncio

    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def gather_or_cancel(tasks: Collection[asyncio.Future[Any]]) -> None:
    """Wait for ``tasks``; when one fails, the others are cancelled and waited for (so
    none runs on under a store its caller closes next) before the failure is raised."""
    import asyncio

    try:
        await asyncio.gather(*tasks)
    except BaseException:
        await cancel_all(tasks)
        raise
