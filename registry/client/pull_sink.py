"""Where a pulled blob's bytes go: the ingest, written strictly in order, checkpointed
at most every ``checkpoint_every`` bytes and ``checkpoint_interval`` seconds (its id then
recorded in ``images.db`` so a later pull resumes it), progress reported, and bytes beyond
the blob's declared size refused (:class:`BlobError`).
"""

from __future__ import annotations

import time

from cas import Ingest

from ..oci import Descriptor
from .connections import WireError, WireResponse
from .image_store import ImageStore
from .progress import Progress
from .transfer import BlobError, TransferOptions

__all__: list[str] = []

# A streamed body goes into the ingest in slices of this many bytes (progress is
# reported, and a checkpoint may be made, between two slices).
_SLICE = 8 << 20


class _Sink:
    """Appends to the ingest in order, checkpoints, reports progress, refuses overruns."""

    def __init__(self, images: ImageStore, ing: Ingest, desc: Descriptor, progress: Progress,
                 options: TransferOptions, recorded: bool) -> None:
        self.images, self.ing, self.desc, self.progress = images, ing, desc, progress
        self.size = desc.size
        self.key = str(desc.digest)
        self.every, self.interval = options.checkpoint_every, options.checkpoint_interval
        self.since = 0
        self.last = time.monotonic()
        self.recorded = recorded  # images.db names this ingest (pending pull)
        self.claim: int | None = None  # ImageStore.claim_ingest's, held until the end

    @property
    def offset(self) -> int:
        return self.ing.offset

    async def write(self, data: bytes | bytearray, *, reused: bool = False) -> None:
        if self.ing.offset + len(data) > self.size:
            raise BlobError(
                f"blob {self.desc.digest}: the registry sent more than the {self.size} bytes "
                "the manifest declares; nothing was kept"
            )
        await self.ing.write(data)
        self.progress.advance(self.key, len(data), reused=reused)
        self.since += len(data)
        if self.since >= self.every and time.monotonic() - self.last >= self.interval:
            await self.checkpoint()

    async def receive(self, resp: WireResponse) -> None:
        """Read ``resp``'s body into the ingest on a worker thread (:meth:`Ingest.receive`),
        up to the blob's end. A body longer than the rest of the blob is refused."""
        if resp.length is not None and self.ing.offset + resp.length > self.size:
            raise BlobError(
                f"blob {self.desc.digest}: the registry sends {resp.length} bytes from byte "
                f"{self.ing.offset} of a blob the manifest declares {self.size} bytes long; "
                "nothing was kept"
            )
        while self.ing.offset < self.size:
            before = self.ing.offset
            try:
                await self.ing.receive(resp.readinto, min(_SLICE, self.size - before),
                                       interrupt=resp.abort)
            finally:
                got = self.ing.offset - before
                self.progress.advance(self.key, got)
                self.since += got
            if not got:
                return  # the body ended (early, if the blob is not complete)
            if self.since >= self.every and time.monotonic() - self.last >= self.interval:
                await self.checkpoint()
        if await resp.run(resp.readinto, memoryview(bytearray(1))):
            raise BlobError(
                f"blob {self.desc.digest}: the registry sent more than the {self.size} bytes "
                "the manifest declares; nothing was kept"
            )

    async def skip(self, resp: WireResponse) -> None:
        """Read past the bytes this ingest holds at the start of a whole-blob answer to a
        ranged GET (a registry that ignores Range), as containerd does; the rest then goes
        on from there, and the digest check at the end covers what was skipped."""
        if resp.length is not None and resp.length != self.size:
            raise BlobError(
                f"blob {self.desc.digest}: the registry answered a ranged request with "
                f"{resp.length} bytes of a blob the manifest declares {self.size} bytes long; "
                "nothing was kept"
            )
        left = self.ing.offset
        scratch = memoryview(bytearray(min(left, 1 << 20)))
        while left:
            want = min(left, len(scratch))
            n, failed = await resp.run(resp.fill, scratch[:want])
            left -= n
            if failed is not None:
                raise failed
            if n < want:
                raise WireError(f"{resp.url}: the body ended {left} bytes before byte "
                                f"{self.ing.offset}, where this pull goes on")

    async def checkpoint(self) -> None:
        """Make what arrived durable and resumable (also by a later process)."""
        self.since = 0
        self.last = time.monotonic()
        await self.ing.checkpoint()
        if not self.recorded:
            await self.images.set_pending_pull(self.desc.digest, self.ing.id)
            self.recorded = True
