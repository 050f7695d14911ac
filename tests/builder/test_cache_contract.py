"""The suite every build-cache backend must pass (``builder.cache.BuildCacheBackend``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cache import (
    FACTS,
    BuildCache,
    BuildCacheBackend,
    CachedLayer,
    CacheEntry,
    CacheManifest,
    MemoryBuildCache,
    entries,
    facts_key,
    step_key,
)
from builder.cache.entries import EARLIER_RELEASE_MISS, IMPORTED_MISS
from builder.cache.manifest import MEDIA_TYPE, MountEntry

BACKENDS = ["sqlite", "memory"]


def _open(kind: str, where: Path) -> BuildCacheBackend:
    return BuildCache(where / "cache.db") if kind == "sqlite" else MemoryBuildCache()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BuildCacheBackend]:
    cache = _open(request.param, tmp_path)
    yield cache
    if isinstance(cache, BuildCache):
        cache.close()


@pytest.fixture(params=BACKENDS)
def other(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BuildCacheBackend]:
    cache = _open(request.param, tmp_path / "other")
    yield cache
    if isinstance(cache, BuildCache):
        cache.close()


def layer(n: int, created: str = "2026-01-01T00:00:00Z") -> CachedLayer:
    return CachedLayer(f"sha256:{n:064x}", 100 + n, f"sha256:{n + 1000:064x}",
                       "application/vnd.oci.image.layer.v1.tar+gzip", created)


EMPTY = CachedLayer("", 0, "", "", "2026-01-01T00:00:00Z")


def record(cache: BuildCacheBackend, parent: str, instruction: str,
           inputs: dict[str, object], produced: CachedLayer) -> str:
    key = step_key(parent, instruction, inputs)
    cache.record(key, parent, instruction, inputs, produced)
    return key


def test_lookup_of_an_unknown_key_is_none(backend: BuildCacheBackend) -> None:
    assert backend.lookup(step_key("", "RUN true", {})) is None


def test_lookup_returns_what_was_recorded(backend: BuildCacheBackend) -> None:
    a = record(backend, "", "RUN a", {"env": {"A": "1"}}, layer(1))
    empty = record(backend, a, "RUN true", {}, EMPTY)
    old = record(backend, a, "RUN old", {}, layer(2, created=""))
    assert backend.lookup(a) == layer(1)
    assert backend.lookup(empty) == EMPTY
    assert backend.lookup(old) == layer(2, created="")


def test_record_replaces_the_entry_under_the_same_key(backend: BuildCacheBackend) -> None:
    key = record(backend, "", "RUN a", {}, layer(1))
    backend.record(key, "", "RUN a", {}, layer(2))
    assert backend.lookup(key) == layer(2)
    assert len(backend.export_manifest().entries) == 1


def test_explain_says_why_a_step_missed(backend: BuildCacheBackend) -> None:
    parent = step_key("", "FROM busybox", {})
    assert backend.explain(parent, "RUN a", {}) == \
        "the previous step changed (or this step never ran before)"
    record(backend, parent, "RUN a", {"files": {"a.txt": "h1", "b.txt": "h2"},
                                      "user": "root"}, layer(1))
    assert backend.explain(parent, "RUN b", {}) == \
        "the instruction changed (no earlier build ran it on this parent)"
    assert backend.explain(parent, "RUN a", {"files": {"a.txt": "h9", "c.txt": "h3"}}) == \
        "inputs changed: files:a.txt, files:b.txt (gone), files:c.txt (new), user (gone)"
    # same inputs: the entry is there, so what is missing is its blob
    assert backend.explain(parent, "RUN a", {"files": {"a.txt": "h1", "b.txt": "h2"},
                                             "user": "root"}) == \
        "its cached layer is no longer stored"


def test_explain_names_an_entry_of_an_earlier_release(
        backend: BuildCacheBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # An upgrade that raised STEP_SEMANTICS: the entry is stored, inputs and all, but
    # under the key the earlier release gave it, so the step runs again.
    inputs = {"files": {"a.txt": "h1"}}
    with monkeypatch.context() as m:
        m.setattr(entries, "STEP_SEMANTICS", entries.STEP_SEMANTICS - 1)
        old = record(backend, "p", "COPY a.txt /", inputs, layer(1))
    assert old != step_key("p", "COPY a.txt /", inputs)
    assert backend.lookup(step_key("p", "COPY a.txt /", inputs)) is None
    assert backend.explain("p", "COPY a.txt /", inputs) == EARLIER_RELEASE_MISS
    assert "earlier pybuild release" in EARLIER_RELEASE_MISS


def test_explain_compares_with_the_latest_entry(backend: BuildCacheBackend) -> None:
    record(backend, "p", "RUN a", {"x": "1", "y": "1"}, layer(1))
    record(backend, "p", "RUN a", {"x": "2", "y": "1"}, layer(2))
    assert backend.explain("p", "RUN a", {"x": "2", "y": "2"}) == "inputs changed: y"


def test_export_gives_every_entry_or_the_named_ones(backend: BuildCacheBackend) -> None:
    a = record(backend, "", "RUN a", {"secret-ish": "value"}, layer(1))
    b = record(backend, a, "RUN b", {}, EMPTY)
    c = record(backend, a, "RUN c", {}, layer(3))
    everything = backend.export_manifest()
    assert [e.key for e in everything.entries] == sorted([a, b, c])
    assert everything.entries[[e.key for e in everything.entries].index(b)] == \
        CacheEntry(b, a, "RUN b", EMPTY)
    only = backend.export_manifest([c, "0" * 64])
    assert only.entries == (CacheEntry(c, a, "RUN c", layer(3)),)
    assert backend.export_manifest([]).entries == ()
    # inputs stay on this machine
    assert b"secret-ish" not in everything.to_json()


def test_import_adds_entries_lazily_and_local_ones_win(backend: BuildCacheBackend) -> None:
    local = record(backend, "", "RUN a", {}, layer(1))
    new = step_key(local, "RUN b", {})
    manifest = CacheManifest.of([CacheEntry(local, "", "RUN a", layer(7)),
                                 CacheEntry(new, local, "RUN b", layer(2))])
    assert backend.import_manifest(manifest) == 1
    assert backend.lookup(local) == layer(1)  # the local entry, whose blob is here
    assert backend.lookup(new) == layer(2)
    assert backend.import_manifest(manifest) == 0
    assert {e.key for e in backend.export_manifest().entries} == {local, new}
    # an imported entry's inputs are not known: explain does not claim which changed
    assert backend.explain(local, "RUN b", {"x": "1"}) == IMPORTED_MISS
    record(backend, local, "RUN b", {"x": "0"}, layer(3))  # a local run: compared again
    assert backend.explain(local, "RUN b", {"x": "1"}) == "inputs changed: x"


def test_a_manifest_moves_entries_between_backends(backend: BuildCacheBackend,
                                                   other: BuildCacheBackend) -> None:
    a = record(backend, "", "RUN a", {}, layer(1))
    b = record(backend, a, "RUN b", {}, EMPTY)
    sent = CacheManifest.from_json(backend.export_manifest().to_json())
    assert other.import_manifest(sent) == 2
    assert (other.lookup(a), other.lookup(b)) == (layer(1), EMPTY)
    assert other.export_manifest() == backend.export_manifest()


def test_record_and_lookup_from_many_threads(backend: BuildCacheBackend) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                key = record(backend, f"t{t}", f"RUN {i}", {}, layer(t * 100 + i))
                assert backend.lookup(key) == layer(t * 100 + i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len(backend.export_manifest().entries) == 200


def test_facts_are_kept_and_travel_without_explaining_steps(backend: BuildCacheBackend,
                                                            other: BuildCacheBackend) -> None:
    """A facts entry (what a step read from the layers below it) comes back from lookup
    and through a manifest, and is never taken for a step when a miss is explained."""
    facts = {"dest": "/app/", "dir": True, "owner": [1000, 1000]}
    key, parent = facts_key("p" * 64, {"ins": "COPY x /app/"})
    backend.record(key, parent, FACTS, {"ins": "COPY x /app/"},
                   CachedLayer("", 0, "", "", facts=facts))
    found = backend.lookup(key)
    assert found is not None and found.facts == facts and not found.digest
    other.import_manifest(backend.export_manifest())
    imported = other.lookup(key)
    assert imported is not None and imported.facts == facts
    assert backend.explain("p" * 64, "COPY x /app/", {}) == \
        "the previous step changed (or this step never ran before)"


# The manifest document itself.

def test_manifest_cache_mounts_round_trip_and_are_blobs() -> None:
    manifest = CacheManifest.of([CacheEntry("1" * 64, "", "RUN a", layer(1))],
                                [MountEntry("pip", layer(7)), MountEntry("apt", layer(8))])
    assert [m.id for m in manifest.mounts] == ["apt", "pip"]
    assert CacheManifest.from_json(manifest.to_json()) == manifest
    assert [str(d.digest) for d in manifest.descriptors()] == \
        [layer(n).digest for n in (1, 8, 7)]


def test_manifest_json_is_sorted_and_round_trips() -> None:
    entries = [CacheEntry(f"{n:064x}", "", f"RUN {n}", layer(n)) for n in (3, 1, 2)]
    manifest = CacheManifest.of(entries)
    assert [e.key for e in manifest.entries] == sorted(e.key for e in entries)
    data = manifest.to_json()
    assert CacheManifest.from_json(data) == manifest
    assert CacheManifest.of(reversed(entries)).to_json() == data


def test_manifest_descriptors_name_each_layer_blob_once() -> None:
    manifest = CacheManifest.of([CacheEntry("1" * 64, "", "RUN a", layer(1)),
                                 CacheEntry("2" * 64, "", "RUN b", layer(1)),
                                 CacheEntry("3" * 64, "", "RUN c", EMPTY),
                                 CacheEntry("4" * 64, "", "RUN d", layer(4))])
    assert [(str(d.digest), d.size, d.media_type) for d in manifest.descriptors()] == \
        [(layer(n).digest, layer(n).size, layer(n).media_type) for n in (1, 4)]


@pytest.mark.parametrize("doc", [
    b"[]",
    b'{"mediaType": "application/json", "entries": []}',
    b'{"mediaType": "' + MEDIA_TYPE.encode() + b'"}',
    b'{"mediaType": "' + MEDIA_TYPE.encode() + b'", "entries": [{"key": "x"}]}',
    b'{"mediaType": "' + MEDIA_TYPE.encode() + b'", "entries": [{"key": "' + b"a" * 64
    + b'", "parent": "", "instruction": "", "layer": {"digest": "md5:x", "size": 1, '
      b'"diff_id": "sha256:x", "media_type": "m"}}]}',
    b"not json",
    b'{"mediaType": "' + MEDIA_TYPE.encode() + b'", "entries": [{"key": "' + b"a" * 64
    + b'", "parent": "", "instruction": "facts", "layer": {"digest": "", "size": 0, '
      b'"diff_id": "", "media_type": "", "facts": []}}]}',
    b'{"mediaType": "' + MEDIA_TYPE.encode() + b'", "entries": [], "mounts": [{"id": "", '
      b'"layer": {"digest": "sha256:' + b"1" * 64 + b'", "size": 1, "diff_id": "sha256:'
    + b"2" * 64 + b'", "media_type": "m"}}]}',
])
def test_a_malformed_manifest_is_refused(doc: bytes) -> None:
    with pytest.raises(ValueError):
        CacheManifest.from_json(doc)


def test_the_sqlite_cache_keeps_entries_across_reopening(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache.db")
    key = record(cache, "", "RUN a", {"x": "1"}, layer(1))
    imported = "f" * 64
    cache.import_manifest(CacheManifest.of([CacheEntry(imported, key, "RUN b", EMPTY)]))
    cache.close()
    cache = BuildCache(tmp_path / "cache.db")
    try:
        assert (cache.lookup(key), cache.lookup(imported)) == (layer(1), EMPTY)
        assert cache.explain("", "RUN a", {"x": "2"}) == "inputs changed: x"
    finally:
        cache.close()
