"""Several registry processes on one storage directory: two apps, each with its own
``Registry`` state (cache, locks), share the store and the metadata database. What one
writes the other serves at once (manifest_cache.py, metadata.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from registry.server import ServerConfig, make_app
from registry.server.manifest_cache import ENTRY_OVERHEAD, CachedManifest, ManifestCache
from registry.server.metadata_sqlite import SqliteMetadata
from registry.server.state import REGISTRY

from .conftest import MakeClient
from .helpers import push_image

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@pytest.fixture
async def pair(make_client: MakeClient, tmp_path: Path) -> tuple[TestClient, TestClient]:
    storage = tmp_path / "shared"
    return await make_client(storage), await make_client(storage)


async def _digest_of(client: TestClient, repo: str, reference: str) -> str | int:
    resp = await client.get(f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)
    if resp.status != 200:
        return resp.status
    return resp.headers["Docker-Content-Digest"]


def _count_lookups(client: TestClient) -> list[str]:
    """Record the metadata lookups the GET path makes in ``client``'s process."""
    meta: Any = client.app[REGISTRY].meta
    calls: list[str] = []
    for name in ("resolve_tag", "get_manifest"):
        real = getattr(meta, name)

        async def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return await _real(*args)

        setattr(meta, name, counted)
    return calls


async def test_a_tag_pushed_through_one_process_is_read_through_the_other_at_once(pair):
    a, b = pair
    first, _ = await push_image(a, "app", "latest", [b"one"])
    assert await _digest_of(b, "app", "latest") == str(first)
    assert await _digest_of(b, "app", "latest") == str(first)  # now cached in b
    second, _ = await push_image(a, "app", "latest", [b"two"])
    assert await _digest_of(b, "app", "latest") == str(second)
    # And back the other way.
    third, _ = await push_image(b, "app", "latest", [b"three"])
    assert await _digest_of(a, "app", "latest") == str(third)


async def test_deletes_through_one_process_are_seen_by_the_other_at_once(pair):
    a, b = pair
    digest, _ = await push_image(a, "app", "v1", [b"one"])
    await push_image(a, "app", "v2", [b"two"])
    assert await _digest_of(b, "app", "v1") == str(digest)
    assert await _digest_of(b, "app", str(digest)) == str(digest)  # cached by digest too
    assert (await a.delete("/v2/app/manifests/v1")).status == 202
    assert await _digest_of(b, "app", "v1") == 404
    assert await _digest_of(b, "app", str(digest)) == str(digest)  # only the tag went
    assert (await a.delete(f"/v2/app/manifests/{digest}")).status == 202
    assert await _digest_of(b, "app", str(digest)) == 404


async def test_hot_manifests_are_served_without_asking_the_metadata(pair):
    a, b = pair
    digest, _ = await push_image(a, "app", "latest", [b"one"])
    assert await _digest_of(b, "app", "latest") == str(digest)
    calls = _count_lookups(b)
    for _ in range(3):
        assert await _digest_of(b, "app", "latest") == str(digest)
        assert await _digest_of(b, "app", str(digest)) == str(digest)
    assert calls == []
    # A commit anywhere (here an unrelated repository, through a) costs one revalidation.
    await push_image(a, "other", "latest", [b"two"])
    assert await _digest_of(b, "app", "latest") == str(digest)
    assert calls == ["resolve_tag", "get_manifest"]
    assert await _digest_of(b, "app", "latest") == str(digest)
    assert calls == ["resolve_tag", "get_manifest"]


async def test_an_injected_metadata_backend_is_used_and_left_open(aiohttp_client, tmp_path):
    meta = await SqliteMetadata.open(tmp_path / "elsewhere.db")
    client = await aiohttp_client(
        make_app(ServerConfig(), storage=tmp_path / "storage", metadata=meta)
    )
    assert client.app[REGISTRY].meta is meta
    digest, _ = await push_image(client, "app", "latest", [b"one"])
    assert await meta.resolve_tag("app", "latest") == str(digest)
    assert not (tmp_path / "storage" / "registry.db").exists()
    await client.close()
    assert await meta.resolve_tag("app", "latest") == str(digest)  # still open
    await meta.close()


# --- the cache's coherence rules, one layer -----------------------------------------------
class _Generation:
    def __init__(self) -> None:
        self.value = 0

    def __call__(self) -> int:
        return self.value


def _entry(digest: str, body: bytes = b"{}") -> CachedManifest:
    return CachedManifest(digest, "application/x", body, f'"{digest}"')


def test_what_was_read_before_a_commit_is_never_cached_as_current():
    gen = _Generation()
    cache = ManifestCache(1 << 20)
    cache.follow(gen)
    seen = cache.sync()
    gen.value += 1  # another process commits while the lookup awaits the metadata
    cache.sync()  # and a concurrent lookup notices
    cache.set_tag("app", "latest", "sha256:old", seen)
    cache.put("app", _entry("sha256:old"), seen)
    assert cache.tag("app", "latest") is None
    assert cache.get("app", "sha256:old") is None
    assert cache.body("app", "sha256:old") is not None  # the bytes are kept


def test_a_commit_unconfirms_everything_until_the_metadata_is_asked_again():
    gen = _Generation()
    cache = ManifestCache(1 << 20)
    cache.follow(gen)
    seen = cache.sync()
    cache.put("app", _entry("sha256:a"), seen)
    cache.set_tag("app", "latest", "sha256:a", seen)
    assert cache.sync() == seen
    assert cache.tag("app", "latest") == "sha256:a"
    assert cache.get("app", "sha256:a") is not None
    gen.value += 1
    cache.sync()
    assert cache.tag("app", "latest") is None
    assert cache.get("app", "sha256:a") is None
    cache.set_tag("app", "latest", "sha256:a")  # no token: nothing learnt
    assert cache.tag("app", "latest") is None


def test_a_cache_following_nothing_never_serves_from_memory():
    cache = ManifestCache(1 << 20)
    seen = cache.sync()
    cache.put("app", _entry("sha256:a"), seen)
    cache.set_tag("app", "latest", "sha256:a", seen)
    cache.sync()
    assert cache.get("app", "sha256:a") is None
    assert cache.tag("app", "latest") is None


def test_the_cache_stays_within_its_bytes():
    gen = _Generation()
    cache = ManifestCache(2 * (ENTRY_OVERHEAD + 4) + 2)
    cache.follow(gen)
    seen = cache.sync()
    for i in range(5):
        cache.put("app", _entry(f"sha256:{i}", b"1234"), seen)
    assert [cache.body("app", f"sha256:{i}") is not None for i in range(5)] == [
        False, False, False, True, True]
    assert cache.get("app", "sha256:4") is not None
    cache.put("app", _entry("sha256:big", b"x" * (ENTRY_OVERHEAD + 11)), seen)
    assert cache.body("app", "sha256:big") is None
