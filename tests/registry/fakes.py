"""An in-memory test double of the part of ``cas.Store`` the registry uses.

For unit tests of the HTTP layer alone, in particular failures the real store cannot be
made to produce on demand (``fail_writes`` makes every ingest write raise StorageFull).
The functional tests use the real store.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from cas import (
    BlobInfo,
    BlobUnknown,
    Digest,
    DigestMismatch,
    IngestUnknown,
    Piece,
    Recipe,
    Segment,
    SizeMismatch,
    StorageFull,
)


@dataclass
class FakeIngest:
    store: FakeStore
    id: str
    algorithm: str
    data: bytearray = field(default_factory=bytearray)
    checkpointed: int = 0
    closed: bool = False

    @property
    def offset(self) -> int:
        return len(self.data)

    async def write(self, data: bytes) -> None:
        if self.store.fail_writes:
            await self.abort()  # as cas does: a failed write ends the ingest
            raise StorageFull(f"ingest {self.id}")
        self.data += data

    async def checkpoint(self) -> None:
        self.checkpointed = len(self.data)

    async def park(self) -> None:
        await self.checkpoint()

    async def commit(self, expected: Digest | None = None, *, size: int | None = None,
                     link: str | None = None, link_own: str | None = None) -> BlobInfo:
        # One cut per blob here: a link_own is always made (as cas does for a new blob).
        self.store.ingests.pop(self.id, None)
        if size is not None and size != len(self.data):
            raise SizeMismatch(size, len(self.data))
        return await self.store.put(bytes(self.data), expected=expected,
                                    algorithm=expected.algorithm if expected else self.algorithm,
                                    link=link or link_own)

    async def abort(self) -> None:
        self.closed = True
        self.store.ingests.pop(self.id, None)


@dataclass
class FakeStats:
    blobs: int
    pieces: int
    logical_bytes: int
    physical_bytes: int

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.physical_bytes if self.physical_bytes else 1.0


@dataclass
class FakeStore:
    blobs: dict[Digest, bytes] = field(default_factory=dict)
    links: dict[Digest, set[str]] = field(default_factory=dict)
    ingests: dict[str, FakeIngest] = field(default_factory=dict)
    fail_writes: bool = False

    async def put(self, data: bytes, *, expected: Digest | None = None,
                  algorithm: str = "sha256", link: str | None = None) -> BlobInfo:
        actual = Digest.of(data, expected.algorithm if expected else algorithm)
        if expected is not None and actual != expected:
            raise DigestMismatch(expected, actual)
        self.blobs[actual] = bytes(data)
        if link is not None:
            self.links.setdefault(actual, set()).add(link)
        return BlobInfo(actual, len(data), linked=link is not None)

    async def begin_ingest(self, *, algorithm: str = "sha256") -> FakeIngest:
        ingest = FakeIngest(self, secrets.token_hex(8), algorithm)
        self.ingests[ingest.id] = ingest
        return ingest

    async def resume_ingest(self, ingest_id: str) -> FakeIngest:
        ingest = self.ingests.get(ingest_id)
        if ingest is None:
            raise IngestUnknown(ingest_id)
        del ingest.data[ingest.checkpointed :]
        return ingest

    async def list_ingests(self) -> list[FakeIngest]:
        return list(self.ingests.values())

    async def expire_ingests(self, older_than: float) -> int:
        return 0

    async def stat(self, digest: Digest) -> BlobInfo | None:
        data = self.blobs.get(digest)
        return None if data is None else BlobInfo(digest, len(data))

    async def read_bytes(self, digest: Digest) -> bytes:
        if digest not in self.blobs:
            raise BlobUnknown(digest)
        return self.blobs[digest]

    async def segments(self, digest: Digest, offset: int = 0,
                       length: int | None = None) -> AsyncIterator[Segment]:
        data = await self.read_bytes(digest)
        end = len(data) if length is None else offset + length
        yield Segment(None, offset, end - offset, data[offset:end])

    async def recipe(self, digest: Digest) -> Recipe:
        data = await self.read_bytes(digest)
        return Recipe(digest, len(data), (Piece(Digest.of(data, "blake3").encoded, 0, len(data)),))

    async def link(self, holder: str, digest: Digest) -> None:
        if digest not in self.blobs:
            raise BlobUnknown(digest)
        self.links.setdefault(digest, set()).add(holder)

    async def link_all(self, holder: str, digests: list[Digest]) -> list[Digest]:
        for digest in digests:
            if digest not in self.blobs:
                raise BlobUnknown(digest)
        added = [d for d in dict.fromkeys(digests) if holder not in self.links.get(d, set())]
        for digest in added:
            self.links.setdefault(digest, set()).add(holder)
        return added

    async def unlink(self, holder: str, digest: Digest) -> bool:
        held = self.links.get(digest, set())
        if holder in held:
            held.remove(holder)
            return True
        return False

    async def is_linked(self, holder: str, digest: Digest) -> bool:
        return holder in self.links.get(digest, set())

    async def holders(self, digest: Digest) -> list[str]:
        return sorted(self.links.get(digest, set()))

    async def stats(self) -> FakeStats:
        size = sum(len(b) for b in self.blobs.values())
        return FakeStats(len(self.blobs), len(self.blobs), size, size)
