"""The registry's own metadata: the :class:`RegistryMetadata` protocol every backend implements,
the records it returns, and :func:`~registry.server.metadata_open.open_metadata`, the one place that builds the backend
a server runs on.

Blob bytes and blob-to-repository links live in ``cas``; the metadata holds what only the
registry knows: repositories, manifests per repository (with their subject, for the
referrers API), tags, upload sessions (id -> repository), the tags a pull-through
cache fetched from upstream, and a repository's own recipe of a blob it pushed when the
store keeps the blob cut otherwise (``docs/piece-index.md``, *Why it is no oracle*).

Backends: :class:`~registry.server.metadata_sqlite.SqliteMetadata`, one SQLite file in the
storage directory, is the embedded default. A networked database shared by several
replicas (PostgreSQL) is the next one: it implements this protocol, is built by
:func:`~registry.server.metadata_open.open_metadata` from the configuration, and adds
itself as one more parameter of the
suite every backend passes (``tests/registry/test_metadata_contract.py``).

Rules every backend keeps (each method's docstring adds its own):

- **Atomic.** Each method is one transaction: a reader sees all of a write or none of it.
- **Shared.** Several instances may be open on the same database at once: processes on
  one machine, replicas on many. When a write's ``await`` returns, it is committed, and
  every later call on *any* instance sees it (read-your-writes across replicas: a tag
  pushed through one replica resolves through another at once).
- **Async, loop-safe.** Every coroutine may be awaited from the event loop and never
  blocks it; :meth:`RegistryMetadata.generation` is the one synchronous method and is cheap.
- **Closed.** :meth:`RegistryMetadata.close` waits for the calls already started; any call after
  it raises ``cas.StoreClosed``. Storage failures are ``cas.StorageFull`` /
  ``cas.StorageNotWritable`` naming what is full or read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CollectResult",
    "ManifestRecord",
    "ManifestsMissing",
    "ReferrerRecord",
    "RegistryMetadata",
    "TagRecord",
    "fitting",
]


def fitting(order: list[tuple[str, int]], max_bytes: int | None) -> list[str]:
    """The digests of the first of ``order`` ((digest, size) pairs) whose sizes add up to
    at most ``max_bytes`` (at least one): what :meth:`RegistryMetadata.referrers` reads."""
    if max_bytes is None:
        return [d for d, _ in order]
    out: list[str] = []
    total = 0
    for digest, size in order:
        total += size
        if out and total > max_bytes:
            break
        out.append(digest)
    return out


class ManifestsMissing(Exception):
    """:meth:`RegistryMetadata.put_manifest` of an index some of whose manifests are not
    (any more) in the repository; nothing was written."""

    def __init__(self, digests: list[str]) -> None:
        super().__init__(f"manifests not in the repository: {', '.join(digests)}")
        self.digests = digests


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    """A manifest as this repository holds it (the bytes themselves are a cas blob)."""

    repo: str
    digest: str
    media_type: str
    size: int
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    # What the manifest references in its repository: an index's manifests, an image's
    # config and layers. None: not known (read from the body later, retention.py).
    references: tuple[str, ...] | None = None
    # The references of an index that are blobs of the repository, not manifests
    # (BuildKit's registry cache lists its layers and cache config in an index):
    # retention counts them as referenced; put_manifest does not require them to be
    # manifests (their fresh cas links protect them, as an image's blobs).
    blob_entries: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TagRecord:
    """A tag for retention: where it points, when it was last pushed and when its manifest
    was last pulled (``time.time()``; None: never, as far as recorded)."""

    tag: str
    digest: str
    pushed: float
    pulled: float | None


@dataclass(frozen=True, slots=True)
class CollectResult:
    """What :meth:`RegistryMetadata.collect` removed (or, dry, would remove) from one
    repository, and what the repository's manifests reference after it."""

    tags: list[tuple[str, str]]  # (tag, digest)
    manifests: list[tuple[str, str]]  # (digest, media type)
    referenced: set[str]  # the manifests left and everything they reference


@dataclass(frozen=True, slots=True)
class ReferrerRecord:
    """One row of a referrers response (spec "Listing Referrers")."""

    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


class RegistryMetadata(Protocol):
    """The registry's metadata store; the module docstring states the rules all methods
    keep (atomic, shared by every instance on the same database, loop-safe)."""

    def generation(self) -> int:
        """A token that changes whenever a write to this database has committed, through
        any instance, since the token was last read.

        Synchronous and cheap (called on the event loop for every cached manifest GET; no
        network round trip, no waiting on locks). Caches compare it to decide whether what
        they read before is still current: equal tokens mean no commit happened in
        between, so results read after the first token are still the database's state.
        It may change more often than needed (any commit, or "cannot tell": a value never
        returned before) -- that only costs a revalidation. A backend that cannot tell
        cheaply returns a new value on every call (always revalidate)."""
        ...

    async def close(self) -> None:
        """Release the backend after the calls already started; later calls raise
        ``cas.StoreClosed``. Closing twice is a no-op. Other instances are unaffected."""
        ...

    # --- repositories ---------------------------------------------------------------------
    async def ensure_repository(self, name: str) -> None:
        """After it, ``name`` exists (idempotent; a repository is never dropped)."""
        ...

    async def repository_exists(self, name: str) -> bool:
        """Whether ``name`` was ever created (by :meth:`ensure_repository` or
        :meth:`put_manifest`). Health checks call it with ``""``."""
        ...

    async def repository_tagged(self, name: str) -> bool:
        """Whether a tag was ever pushed to ``name`` (by :meth:`put_manifest`), whether or
        not it still holds one: Distribution's ``tags/list`` is NAME_UNKNOWN until then."""
        ...

    async def repositories(self, last: str | None, limit: int) -> list[str]:
        """Up to ``limit`` repository names after ``last`` (exclusive; None: from the
        start), in byte order (ASCIIbetical, as the catalog API pages them)."""
        ...

    # --- manifests ------------------------------------------------------------------------
    async def put_manifest(self, record: ManifestRecord, tags: tuple[str, ...] = ()) -> None:
        """One transaction: ``record.repo`` exists, ``record`` is its manifest at
        ``record.digest`` (replacing an earlier record of that digest, pushed now), and
        every tag in ``tags`` points at it (moved from wherever it pointed, pushed now).
        No reader sees the manifest without its tags or a tag without its manifest.
        ``record.references`` are recorded with it; for an index (``INDEX_TYPES``) they
        must all, but ``record.blob_entries``, be manifests of the repository inside the
        same transaction, else :class:`ManifestsMissing` and nothing is written
        (:meth:`collect` may have taken one since the caller checked)."""
        ...

    async def get_manifest(self, repo: str, digest: str) -> ManifestRecord | None:
        """The record :meth:`put_manifest` stored (annotations as given), or None."""
        ...

    async def manifests_present(self, repo: str, digests: list[str]) -> set[str]:
        """Which of ``digests`` (any number) are manifests of ``repo``, in one snapshot."""
        ...

    async def delete_manifest(self, repo: str, digest: str) -> list[str] | None:
        """One transaction: drop the manifest and every tag of ``repo`` pointing at it;
        the tags dropped, or None (nothing changed) if it was not there."""
        ...

    async def referrers(self, repo: str, subject: str, last: str | None = None,
                        limit: int | None = None, max_bytes: int | None = None
                        ) -> list[ReferrerRecord]:
        """The manifests of ``repo`` whose subject is ``subject``, oldest first (ties by
        digest): spec "Listing Referrers". With ``last``, only those after the manifest
        of that digest (none if it is not a referrer of ``subject``); with ``limit``, at
        most that many; with ``max_bytes``, no more than the manifests' sizes add up to
        (bounding their annotations; at least one). Empty: none follow. Pages of a long
        list, each read in a few queries however many referrers come before it."""
        ...

    # --- retention (retention.py) ---------------------------------------------------------
    async def tag_records(self, repo: str) -> list[TagRecord]:
        """Every tag of ``repo`` with its push time and its manifest's last recorded pull."""
        ...

    async def record_pulls(self, pulls: list[tuple[str, str, float]]) -> None:
        """One transaction: each ``(repo, digest, when)`` manifest was pulled at ``when``
        (a later time replaces an earlier one, never the reverse; unknown ones are skipped)."""
        ...

    async def renew_manifest(self, repo: str, digest: str, pushed_before: float) -> float | None:
        """When manifest ``digest`` of ``repo`` counts as pushed, after this call; None if
        ``repo`` does not hold it. One pushed before ``pushed_before`` counts as pushed
        now (its tags, references and bytes unchanged): :meth:`collect`'s
        ``untagged_before`` starts from now again, as after a PUT of it. The check and the
        write are one transaction that a concurrent :meth:`collect` either precedes (None:
        it took the manifest) or follows (it keeps it). One pushed since ``pushed_before``
        is only looked up: nothing is written."""
        ...

    async def unknown_references(self, repo: str, limit: int) -> list[str]:
        """Up to ``limit`` manifests of ``repo`` whose references were not recorded
        (stored with ``references=None``)."""
        ...

    async def set_references(self, repo: str, digest: str, references: tuple[str, ...]) -> None:
        """Record what manifest ``digest`` references (if it is still there)."""
        ...

    async def collect(
        self, repo: str, tags: list[TagRecord], untagged_before: float, *, dry_run: bool = False
    ) -> CollectResult:
        """One transaction over ``repo``:

        1. delete each of ``tags`` that still points where it did, pushed at the same time
           (a tag pushed again since the caller read it stays);
        2. delete, repeatedly until none is left, every manifest pushed before
           ``untagged_before`` that no tag points at, that no remaining manifest references
           (an index's manifests) and whose subject, if any, is not a manifest of the
           repository (a referrer of a kept subject stays; of a removed one, it goes);
        3. report what the remaining manifests reference, and the manifests themselves.

        With ``dry_run`` nothing changes: the same is computed and rolled back."""
        ...

    # --- tags -----------------------------------------------------------------------------
    async def resolve_tag(self, repo: str, tag: str) -> str | None:
        """The digest ``tag`` points at now (the last committed write wins), or None."""
        ...

    async def tags(self, repo: str, last: str | None, limit: int) -> list[str]:
        """Up to ``limit`` tags of ``repo`` after ``last`` (exclusive), in byte order."""
        ...

    async def delete_tag(self, repo: str, tag: str) -> bool:
        """Drop the tag (its manifest stays); whether it existed."""
        ...

    # --- upload sessions ------------------------------------------------------------------
    async def add_upload(self, upload_id: str, repo: str) -> None:
        """Record an open upload session for ``repo``; the repository itself is not
        created (it appears once something is committed to it). An id already recorded
        is an error (ids are unique)."""
        ...

    async def upload_repository(self, upload_id: str) -> str | None:
        """The repository the session was opened for, or None if unknown or removed."""
        ...

    async def remove_upload(self, upload_id: str) -> None:
        """Forget the session (idempotent)."""
        ...

    async def uploads(self) -> list[str]:
        """The ids of every recorded session, whichever instance opened it."""
        ...

    # --- pull-through cache ---------------------------------------------------------------
    async def proxy_tag(self, repo: str, tag: str) -> tuple[str, float] | None:
        """The digest ``tag`` had upstream and when (``time.time()``) that was checked."""
        ...

    async def set_proxy_tag(self, repo: str, tag: str, digest: str, checked: float) -> None:
        """Remember (replacing) what upstream said ``tag`` was at ``checked``. Independent
        of :meth:`resolve_tag`: the local tag is set by :meth:`put_manifest`."""
        ...

    # --- a repository's own recipes -------------------------------------------------------
    # The store keeps one recipe per blob, the cut of whoever committed it first; a push
    # into a repository records its own cut here when that differs, so the repository's
    # recipe never shows that the blob existed elsewhere. A recipe (BLAKE3 key hex, length
    # of each piece, in blob order) describes bytes a digest fixes: it stays valid for as
    # long as the blob exists, so a row needs no reference count and may outlive the link.
    async def set_blob_recipe(self, repo: str, digest: str,
                              recipe: list[tuple[str, int]] | None) -> None:
        """``recipe`` is ``repo``'s own recipe of blob ``digest`` now (replacing any);
        None forgets it (the repository then sees the store's)."""
        ...

    async def blob_recipe(self, repo: str, digest: str) -> list[tuple[str, int]] | None:
        """``repo``'s own recipe of ``digest`` as :meth:`set_blob_recipe` left it, or None."""
        ...

    async def copy_blob_recipe(self, source: str, repo: str, digest: str) -> None:
        """One transaction: ``repo``'s own recipe of ``digest`` becomes ``source``'s (none
        when ``source`` has none): a blob mounted from ``source`` reads as it does there."""
        ...
