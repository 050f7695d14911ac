"""A repository's own recipe of a blob (``docs/piece-index.md``, *Why it is no oracle*).

The store keeps one recipe per blob: the cut of whoever committed it first. Piece-level
pushes let the client choose the cut, so the store's recipe of a blob pushed into
repository R may be the cut some other repository's push made; served to R's readers,
it would tell them that the blob existed before, in a repository they may not read. So a
push into R that commits a blob the store keeps cut otherwise records R's own cut
(:meth:`~registry.server.metadata.RegistryMetadata.set_blob_recipe`), and R's recipe is
that one. A recipe only describes bytes a digest fixes (each piece's BLAKE3 key of that
byte range), so it stays true for as long as the blob exists: the bytes are still read
from the store's pieces, and no reference counting is needed. A row is written only by a
push that sent the whole blob (its bytes, or its pieces with their plan): the table
grows no faster than the work clients do.

The row is written before the blob is linked into R: no reader of R ever sees the blob
with the store's recipe in between. A commit that finds the store's recipe to be its own
cut links in its transaction instead (:func:`commit_into`): R's readers then see that cut,
or R's own earlier one until the write that forgets it. Only a second commit of the same
new blob, cut otherwise, landing between the commit's look at the store and its
transaction would show the store's cut in R until the row follows, a few milliseconds.
"""

from __future__ import annotations

from cas import BlobInfo, Digest

from .state import Registry, holder

__all__ = ["commit_into", "mount_recipe", "put_into", "recipe_in", "record_own"]


async def commit_into(reg: Registry, name: str, info: BlobInfo) -> None:
    """After a push into ``name`` committed a blob with ``link_own=holder(name)``
    (``info``, the commit's answer): record its own cut as ``name``'s recipe of it
    (:func:`record_own`), so that ``name``'s recipe is its last push's, whatever the
    store held before; and link the blob into ``name`` if the commit did not.

    The commit links in its own transaction when the store's recipe is the push's cut
    (mostly: a new blob), so GC cannot take the blob between the two, however short its
    grace. When the store keeps the blob cut otherwise, the commit does not link: the
    cut is recorded first, then the blob linked (``BlobUnknown`` if GC took it in
    between: the commit renewed the blob's commit time, so only a blob no repository
    holds, and a GC whose grace is shorter than that moment, can)."""
    await record_own(reg, name, info)
    if not info.linked:
        await reg.store.link(holder(name), info.digest)


async def record_own(reg: Registry, name: str, info: BlobInfo) -> None:
    """Record the commit's own cut (``info.own_recipe``) as ``name``'s recipe of the
    blob, before it is linked into ``name`` (or just after, by the commit itself, when the
    store's recipe was this push's cut); or forget an earlier one when the store's recipe
    is this push's cut."""
    digest = str(info.digest)
    # Mostly there is nothing to forget: a read then, not a write transaction.
    if info.own_recipe is not None or await reg.meta.blob_recipe(name, digest) is not None:
        own = list(info.own_recipe) if info.own_recipe is not None else None
        await reg.meta.set_blob_recipe(name, digest, own)


async def put_into(reg: Registry, name: str, data: bytes, digest: Digest) -> None:
    """Store ``data`` (a manifest, or a blob it carries) as ``digest``, unlinked, with
    ``name``'s recipe of it recorded (:func:`record_own`); the caller links it."""
    await record_own(reg, name, await reg.store.put(data, expected=digest, algorithm=digest.algorithm))


async def mount_recipe(reg: Registry, source: str, name: str, digest: Digest) -> None:
    """Before ``digest`` is mounted from ``source`` into ``name``: ``name`` reads it as
    ``source`` does (the caller may read ``source``)."""
    await reg.meta.copy_blob_recipe(source, name, str(digest))


async def recipe_in(reg: Registry, name: str, digest: Digest) -> list[tuple[str, int, int]]:
    """``digest``'s recipe as repository ``name`` sees it: ``(key, offset, length)`` in
    blob order, its own when recorded, else the store's (``BlobUnknown`` without the
    blob). Whether ``name`` holds the blob and the caller may read it is the caller's check."""
    own = await reg.meta.blob_recipe(name, str(digest))
    if own is not None:
        out, pos = [], 0
        for key, length in own:
            out.append((key, pos, length))
            pos += length
        return out
    recipe = await reg.store.recipe(digest)
    return [(p.key, p.offset, p.length) for p in recipe.pieces]
