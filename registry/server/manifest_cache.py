"""The in-memory cache of hot manifests and tag resolutions, coherent across processes.

Several registry processes may serve one store and one metadata database; each keeps its
own cache. Coherence comes from the metadata's :meth:`~registry.server.metadata.Metadata.
generation` token, which changes whenever any process commits a write:

- :meth:`ManifestCache.sync` reads the token (once per lookup). When it moved, every tag
  resolution is dropped and every manifest becomes *unconfirmed*; nothing cached is then
  served until the metadata is asked again. A tag pushed or deleted through process A is
  therefore read through process B at once: B's next lookup sees a new token.
- What a lookup learns from the metadata is cached only with the token taken *before* it
  asked (:meth:`sync`'s return value, passed as ``seen``) and only if the token has not
  moved since: results that might predate another commit are never marked current.
- A manifest's bytes are immutable for its digest, so an unconfirmed entry keeps its body
  (:meth:`ManifestCache.body`): confirming it costs one metadata lookup, not a store read.

The cost of coherence: one ``generation()`` call per lookup (for SQLite a read of the
WAL-index header in shared memory, well under a microsecond: metadata_sqlite.py), and
one metadata query per tag lookup after any commit anywhere.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ENTRY_OVERHEAD", "CachedManifest", "ManifestCache"]


@dataclass(frozen=True, slots=True)
class CachedManifest:
    """A manifest ready to serve: its exact bytes and the headers that describe it."""

    digest: str
    media_type: str
    body: bytes
    etag: str
    headers: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Built once per cached manifest rather than once per GET.
        self.headers.update(
            {
                "Content-Type": self.media_type,
                "Docker-Content-Digest": self.digest,
                "ETag": self.etag,
                "Docker-Distribution-API-Version": "registry/2.0",
            }
        )


# What an entry costs beyond its body (measured: ~630 bytes for a small manifest): its
# key, its LRU node, the CachedManifest and its headers. Counted, so that many small
# manifests (signatures, attestations) cannot hold several times ``max_bytes``.
ENTRY_OVERHEAD = 1024


def _cost(entry: CachedManifest) -> int:
    return len(entry.body) + ENTRY_OVERHEAD


def _never_current() -> Callable[[], int]:
    fresh = itertools.count()
    return lambda: next(fresh)


class ManifestCache:
    """LRU of hot manifests and tag resolutions, bounded by total manifest bytes (each
    entry counted with its bookkeeping, ``ENTRY_OVERHEAD``); see the module docstring for
    the coherence rules.

    Until :meth:`follow` names a generation source, every token is new: nothing is ever
    served without asking the metadata (correct, merely slower)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._bytes = 0
        self._manifests: OrderedDict[tuple[str, str], CachedManifest] = OrderedDict()
        self._confirmed: set[tuple[str, str]] = set()
        self._tags: dict[tuple[str, str], str] = {}
        self._generation: Callable[[], int] = _never_current()
        self._at: int | None = None

    def follow(self, generation: Callable[[], int]) -> None:
        """Take coherence tokens from ``generation`` (a ``RegistryMetadata.generation``)."""
        self._generation = generation
        self._at = None

    def sync(self) -> int:
        """Read the token now; drop what a commit since the last sync may have changed.
        The token is what :meth:`put` and :meth:`set_tag` take as ``seen``."""
        now = self._generation()
        if now != self._at:
            self._at = now
            self._tags = {}
            self._confirmed = set()
        return now

    def get(self, repo: str, digest: str) -> CachedManifest | None:
        """The manifest, if confirmed in ``repo`` since the last :meth:`sync`."""
        if (repo, digest) not in self._confirmed:
            return None
        return self.body(repo, digest)

    def body(self, repo: str, digest: str) -> CachedManifest | None:
        """The manifest's bytes and headers, confirmed or not (bytes never change)."""
        entry = self._manifests.get((repo, digest))
        if entry is not None:
            self._manifests.move_to_end((repo, digest))
        return entry

    def put(self, repo: str, entry: CachedManifest, seen: int | None = None) -> None:
        """Cache ``entry``; confirmed in ``repo`` if the metadata said so after token
        ``seen`` and no commit happened since (else kept unconfirmed)."""
        if _cost(entry) > self.max_bytes:
            return
        key = (repo, entry.digest)
        old = self._manifests.pop(key, None)
        if old is not None:
            self._bytes -= _cost(old)
        self._manifests[key] = entry
        self._bytes += _cost(entry)
        if seen is not None and self.sync() == seen:
            self._confirmed.add(key)
        while self._bytes > self.max_bytes:
            evicted_key, evicted = self._manifests.popitem(last=False)
            self._bytes -= _cost(evicted)
            self._confirmed.discard(evicted_key)

    def drop(self, repo: str, digest: str) -> None:
        old = self._manifests.pop((repo, digest), None)
        if old is not None:
            self._bytes -= _cost(old)
        self._confirmed.discard((repo, digest))
        for key in [k for k, v in self._tags.items() if k[0] == repo and v == digest]:
            del self._tags[key]

    def tag(self, repo: str, tag: str) -> str | None:
        """What ``tag`` resolved to, if learnt since the last :meth:`sync`."""
        return self._tags.get((repo, tag))

    def set_tag(self, repo: str, tag: str, digest: str, seen: int | None = None) -> None:
        """Remember a resolution the metadata gave after token ``seen``, if no commit
        happened since; without ``seen`` nothing is remembered."""
        if seen is None or self.sync() != seen:
            return
        if len(self._tags) > 100_000:
            self._tags.clear()
        self._tags[(repo, tag)] = digest

    def drop_tag(self, repo: str, tag: str) -> None:
        self._tags.pop((repo, tag), None)
