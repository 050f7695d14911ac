"""The manifest cache holds no more memory than its bound, however small the manifests
(signatures and attestations are a few hundred bytes each, and a registry serves
hundreds of thousands of them over months)."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc

from registry.server.manifest_cache import CachedManifest, ManifestCache

INDEX = "application/vnd.oci.image.index.v1+json"


def test_many_small_manifests_stay_within_the_bound() -> None:
    bound = 2 << 20
    body = b'{"schemaVersion":2,"mediaType":"' + INDEX.encode() + b'","manifests":[]}'
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ManifestCache(bound)
        for i in range(20_000):
            digest = "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()
            cache.put(f"team{i % 100}/signatures", CachedManifest(digest, INDEX, body, f'"{digest}"'))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.body("team99/signatures", digest) is not None  # the newest is cached
    assert held <= bound, f"{len(body)}-byte manifests: {held} bytes held for a bound of {bound}"
