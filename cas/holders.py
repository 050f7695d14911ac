"""Names of link holders: who keeps a blob alive.

A blob stays in the store while some *holder* links it (:meth:`cas.Store.link`); GC takes
the blobs no holder links. The store treats a holder as an opaque string; the packages
above it name their holders here, one kind each, written ``<kind>:<name>``:

=============  ===================================  =======================================
kind           name                                 who links
=============  ===================================  =======================================
``repo:``      a repository (``library/alpine``)    the registry: the blob is readable in
                                                    that repository (blob PUT, mount,
                                                    manifest PUT)
``image:``     an image reference                   the client's local image store: the
               (``registry.example/app:1``)         blobs of an image it pulled or copied
``cache:``     a build cache key (``<key>``, or     the builder: a cached step's layer, a
               ``base:<manifest digest>``)          base image read from an OCI layout
``ingest:``    an open ingest's id                  the store itself: an ingest assembled
                                                    from pieces of that blob (a pull of an
                                                    update) keeps it until the ingest's
                                                    commit or abort removes the link; a
                                                    push or copy of a local image holds
                                                    its blobs so (:mod:`cas.lease`)
=============  ===================================  =======================================

:func:`parse_holder` reads a holder back; a holder of any other form is not one of these
(``None``), so other users of the store can keep their own names. Holders are stored in
the store's metadata (``links``): these spellings are part of the on-disk format.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = [
    "Holder",
    "HolderKind",
    "cache_holder",
    "image_holder",
    "ingest_holder",
    "parse_holder",
    "repository_holder",
]


class HolderKind(enum.Enum):
    """The kinds of holder; the value is the prefix before the ``:``."""

    REPOSITORY = "repo"
    IMAGE = "image"
    CACHE = "cache"
    INGEST = "ingest"


class Holder(NamedTuple):
    kind: HolderKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"


def repository_holder(name: str) -> str:
    """The holder that makes a blob readable in registry repository ``name``."""
    return str(Holder(HolderKind.REPOSITORY, name))


def image_holder(ref: str) -> str:
    """The holder that keeps the blobs of local image ``ref`` alive."""
    return str(Holder(HolderKind.IMAGE, ref))


def cache_holder(key: str) -> str:
    """The holder that keeps the layer of build cache entry ``key`` alive."""
    return str(Holder(HolderKind.CACHE, key))


def ingest_holder(ingest_id: str) -> str:
    """The holder by which open ingest ``ingest_id`` keeps a blob whose pieces it reuses
    (:meth:`cas.Ingest.reuse_pieces` with ``within``): one link instead of one hold per
    piece. :meth:`~cas.meta.Metadata.commit_blob` and :meth:`~cas.meta.Metadata.drop_ingest`
    remove it."""
    return str(Holder(HolderKind.INGEST, ingest_id))


def parse_holder(text: str) -> Holder | None:
    """The kind and name of holder ``text``; ``None`` when it is of no kind above."""
    prefix, sep, name = text.partition(":")
    if not sep:
        return None
    try:
        return Holder(HolderKind(prefix), name)
    except ValueError:
        return None
