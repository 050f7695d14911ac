"""Keep blobs in the store while something reads them: :func:`held`.

A reader of a local image (a push, a copy out of the store) must not lose its blobs to an
``rmi`` and a ``storage gc`` run meanwhile, as Docker's layer references and containerd's
leases keep them. The hold is an open ingest linking the blobs (holder ``ingest:<id>``,
:mod:`cas.holders`): its abort removes the links, and a holder killed before that leaves
an idle ingest that ``storage gc`` expires after ``--ingest-ttl``, links and all.

A store opened read-only (:mod:`cas.read_only`) can hold nothing: nothing removes its
blobs through a read-only file system, and the reader goes on without a hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable

from .digest import Digest
from .errors import BlobUnknown
from .holders import ingest_holder
from .store import Store

__all__ = ["held"]


@contextlib.asynccontextmanager
async def held(store: Store, digests: Iterable[Digest]) -> AsyncIterator[None]:
    """Hold those of ``digests`` the store has until the block ends. One it lacks (a
    foreign layer a copy fetches from its URLs, or one removed already) is not held: the
    reader meets its absence as it would without the hold. A read-only store holds
    nothing (see above)."""
    if store.core.read_only:
        yield
        return
    ingest = await store.begin_ingest()
    try:
        for digest in digests:
            with contextlib.suppress(BlobUnknown):
                await store.link(ingest_holder(ingest.id), digest)
        yield
    finally:
        await ingest.abort()
