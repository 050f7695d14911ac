"""The suite every registry metadata backend must pass (registry/server/metadata.py).

``opener`` opens one more instance on the same database each time it is called: two
instances stand for two processes or replicas sharing it. A backend joins the suite by
adding a parameter to the ``opener`` fixture (PostgreSQL: open from a DSN on a fresh
schema).
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from cas.errors import StoreClosed
from registry.server.metadata import ManifestRecord, RegistryMetadata
from registry.server.metadata_pg import PgRegistryMetadata
from registry.server.metadata_sqlite import SqliteMetadata

Opener = Callable[[], Awaitable[RegistryMetadata]]


@pytest.fixture(params=["sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[RegistryMetadata] = []
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database(f"reg_{uuid.uuid4().hex[:12]}")

    async def open_one() -> RegistryMetadata:
        meta: RegistryMetadata
        if url is not None:
            meta = await PgRegistryMetadata.open(url, migrate=True)
        else:
            meta = await SqliteMetadata.open(tmp_path / "registry.db")
        opened.append(meta)
        return meta

    yield open_one
    for meta in opened:
        await meta.close()


@pytest.fixture
async def a(opener: Opener) -> RegistryMetadata:
    return await opener()


@pytest.fixture
async def b(opener: Opener) -> RegistryMetadata:
    return await opener()


def _digest(i: int) -> str:
    return f"sha256:{i:064x}"


def _record(repo: str, i: int, **kw: object) -> ManifestRecord:
    return ManifestRecord(repo, _digest(i), "application/vnd.oci.image.manifest.v1+json",
                          100 + i, **kw)  # type: ignore[arg-type]


# --- repositories -------------------------------------------------------------------------
async def test_repositories_exist_once_created_and_page_in_byte_order(a: RegistryMetadata, b: RegistryMetadata):
    assert not await a.repository_exists("lib/app")
    for name in ["lib/app", "Zed", "alpha", "lib/app"]:
        await a.ensure_repository(name)
    assert await b.repository_exists("lib/app")
    assert await b.repositories(None, 10) == ["Zed", "alpha", "lib/app"]
    assert await b.repositories("Zed", 1) == ["alpha"]
    assert await b.repositories("lib/app", 10) == []
    assert await b.repository_exists("") is False


async def test_a_repository_is_tagged_from_its_first_tag_on(a: RegistryMetadata, b: RegistryMetadata):
    # Distribution's tags/list tells a repository never tagged (404) from one whose tags
    # were all deleted (no tags).
    await a.ensure_repository("blobs")
    await a.put_manifest(_record("bydigest", 1))
    for name in ("blobs", "bydigest", "nobody"):
        assert not await b.repository_tagged(name), name
    await a.put_manifest(_record("bydigest", 2), ("v1",))
    assert await b.repository_tagged("bydigest")
    assert await b.delete_tag("bydigest", "v1")
    assert await b.delete_manifest("bydigest", _digest(2)) == []
    assert await b.delete_manifest("bydigest", _digest(1)) == []
    assert await a.repository_tagged("bydigest")
    assert not await a.repository_tagged("blobs")


# --- manifests ----------------------------------------------------------------------------
async def test_put_manifest_records_it_and_its_tags_for_every_instance(a: RegistryMetadata, b: RegistryMetadata):
    rec = _record("app", 1, subject=_digest(9), artifact_type="x/sbom",
                  annotations={"k": "v"})
    await a.put_manifest(rec, ("v1", "latest"))
    assert await b.repository_exists("app")
    assert await b.get_manifest("app", _digest(1)) == rec
    assert await b.get_manifest("other", _digest(1)) is None
    assert await b.resolve_tag("app", "v1") == _digest(1)
    assert await b.resolve_tag("app", "latest") == _digest(1)
    # A tag moves; the manifest it left stays.
    await b.put_manifest(_record("app", 2), ("latest",))
    assert await a.resolve_tag("app", "latest") == _digest(2)
    assert await a.resolve_tag("app", "v1") == _digest(1)
    assert await a.get_manifest("app", _digest(1)) == rec


async def test_put_manifest_again_replaces_the_record(a: RegistryMetadata, b: RegistryMetadata):
    await a.put_manifest(_record("app", 1, annotations={"k": "1"}))
    replaced = _record("app", 1, annotations={"k": "2"})
    await b.put_manifest(replaced)
    assert await a.get_manifest("app", _digest(1)) == replaced


async def test_a_tag_never_resolves_to_a_manifest_not_yet_there(a: RegistryMetadata, b: RegistryMetadata):
    stop = asyncio.Event()
    missing: list[str] = []

    async def read() -> None:
        while not stop.is_set():
            digest = await b.resolve_tag("race", "latest")
            if digest is not None and await b.get_manifest("race", digest) is None:
                missing.append(digest)

    reader = asyncio.create_task(read())
    for i in range(60):
        await a.put_manifest(_record("race", i), ("latest",))
    stop.set()
    await reader
    assert missing == []


async def test_manifests_present_answers_for_any_number(a: RegistryMetadata, b: RegistryMetadata):
    assert await b.manifests_present("app", []) == set()
    for i in range(0, 1200, 3):
        await a.put_manifest(_record("app", i))
    await a.put_manifest(_record("elsewhere", 1))
    wanted = [_digest(i) for i in range(1200)]
    assert await b.manifests_present("app", wanted) == {_digest(i) for i in range(0, 1200, 3)}


async def test_delete_manifest_drops_it_and_only_its_tags(a: RegistryMetadata, b: RegistryMetadata):
    await a.put_manifest(_record("app", 1), ("v1", "stable"))
    await a.put_manifest(_record("app", 2), ("v2",))
    await a.put_manifest(_record("other", 1), ("v1",))
    assert sorted(await b.delete_manifest("app", _digest(1)) or []) == ["stable", "v1"]
    assert await a.get_manifest("app", _digest(1)) is None
    assert await a.resolve_tag("app", "v1") is None
    assert await a.tags("app", None, 10) == ["v2"]
    assert await a.resolve_tag("other", "v1") == _digest(1)
    assert await b.delete_manifest("app", _digest(1)) is None
    assert await b.delete_manifest("app", _digest(7)) is None
    assert await a.tags("app", None, 10) == ["v2"]


async def test_referrers_are_a_repositorys_manifests_with_that_subject_oldest_first(
    a: RegistryMetadata, b: RegistryMetadata
):
    subject = _digest(100)
    await a.put_manifest(_record("app", 3, subject=subject, artifact_type="x/sig",
                                 annotations={"n": "1"}))
    await a.put_manifest(_record("app", 1, subject=subject))
    await a.put_manifest(_record("app", 2))
    await a.put_manifest(_record("other", 4, subject=subject))
    found = await b.referrers("app", subject)
    assert [r.digest for r in found] == [_digest(3), _digest(1)]
    assert (found[0].media_type, found[0].size, found[0].artifact_type, found[0].annotations) == (
        "application/vnd.oci.image.manifest.v1+json", 103, "x/sig", {"n": "1"})
    assert found[1].artifact_type is None and found[1].annotations is None
    assert await b.referrers("app", _digest(101)) == []


async def test_referrers_page_after_a_digest_in_the_same_order(a: RegistryMetadata, b: RegistryMetadata):
    subject = _digest(100)
    for i in (7, 3, 9, 1, 5, 2, 8):
        await a.put_manifest(_record("app", i, subject=subject))
    await a.put_manifest(_record("app", 4, subject=_digest(101)))
    every = [r.digest for r in await b.referrers("app", subject)]
    assert len(every) == 7
    pages, last = [], None
    while True:
        page = [r.digest for r in await b.referrers("app", subject, last, 3)]
        pages.append(page)
        if len(page) < 3:
            break
        last = page[-1]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [d for p in pages for d in p] == every
    assert await b.referrers("app", subject, every[-1], 3) == []
    # a digest that is no referrer of this subject starts no page
    assert await b.referrers("app", subject, _digest(4), 3) == []
    # sizes (100 + i here) bound a batch too, at least one coming back
    assert [r.digest for r in await b.referrers("app", subject, None, 10, 215)] == every[:2]
    assert [r.digest for r in await b.referrers("app", subject, every[0], 10, 1)] == every[1:2]


async def test_referrers_pushed_again_come_last_on_every_backend(a: RegistryMetadata, b: RegistryMetadata):
    # The order is the push time, then the digest byte by byte (SQLite's BINARY,
    # PostgreSQL's COLLATE "C"): the same pages from either backend.
    subject = _digest(100)
    for i in (3, 1, 2):
        await a.put_manifest(_record("app", i, subject=subject))
    await b.put_manifest(_record("app", 3, subject=subject))  # pushed again: now the newest
    expected = [_digest(1), _digest(2), _digest(3)]
    assert [r.digest for r in await a.referrers("app", subject)] == expected
    pages = [[r.digest for r in await b.referrers("app", subject, last, 1)] for last in (None, *expected)]
    assert pages == [[d] for d in expected] + [[]]


# --- tags ---------------------------------------------------------------------------------
async def test_tags_page_in_byte_order_and_delete(a: RegistryMetadata, b: RegistryMetadata):
    await a.put_manifest(_record("app", 1), ("b", "B", "a", "1"))
    assert await b.tags("app", None, 10) == ["1", "B", "a", "b"]
    assert await b.tags("app", "B", 2) == ["a", "b"]
    assert await b.tags("none", None, 10) == []
    assert await b.delete_tag("app", "a") is True
    assert await b.delete_tag("app", "a") is False
    assert await a.resolve_tag("app", "a") is None
    assert await a.get_manifest("app", _digest(1)) is not None  # the manifest stays


# --- upload sessions ----------------------------------------------------------------------
async def test_upload_sessions_are_shared_and_do_not_create_the_repository(
    a: RegistryMetadata, b: RegistryMetadata
):
    await a.add_upload("u1", "app")
    await b.add_upload("u2", "lib/other")
    assert not await b.repository_exists("app")
    assert await b.upload_repository("u1") == "app"
    assert sorted(await a.uploads()) == ["u1", "u2"]
    with pytest.raises(Exception):  # noqa: B017 -- the backend's own duplicate-key error
        await b.add_upload("u1", "elsewhere")
    assert await a.upload_repository("u1") == "app"
    await b.remove_upload("u1")
    await b.remove_upload("u1")
    assert await a.upload_repository("u1") is None
    assert await a.uploads() == ["u2"]


# --- pull-through cache -------------------------------------------------------------------
async def test_proxy_tags_are_remembered_apart_from_local_tags(a: RegistryMetadata, b: RegistryMetadata):
    assert await b.proxy_tag("cache/app", "latest") is None
    await a.set_proxy_tag("cache/app", "latest", _digest(1), 1000.5)
    assert await b.proxy_tag("cache/app", "latest") == (_digest(1), 1000.5)
    assert await b.resolve_tag("cache/app", "latest") is None
    await b.set_proxy_tag("cache/app", "latest", _digest(2), 2000.0)
    assert await a.proxy_tag("cache/app", "latest") == (_digest(2), 2000.0)


# --- a repository's own recipes ------------------------------------------------------------
async def test_a_repository_s_own_recipe_is_the_last_one_set_and_is_its_alone(
    a: RegistryMetadata, b: RegistryMetadata
):
    first = [("ab" * 32, 100), ("cd" * 32, 50), ("ab" * 32, 100)]
    assert await a.blob_recipe("team/a", _digest(1)) is None
    await a.set_blob_recipe("team/a", _digest(1), first)
    assert await b.blob_recipe("team/a", _digest(1)) == first
    assert await b.blob_recipe("team/b", _digest(1)) is None
    assert await b.blob_recipe("team/a", _digest(2)) is None
    later = [("ef" * 32, 250)]
    await b.set_blob_recipe("team/a", _digest(1), later)
    assert await a.blob_recipe("team/a", _digest(1)) == later
    await a.set_blob_recipe("team/a", _digest(1), None)
    assert await b.blob_recipe("team/a", _digest(1)) is None
    await a.set_blob_recipe("team/a", _digest(1), None)  # forgetting twice is harmless


async def test_a_mount_takes_its_source_s_recipe_or_none(a: RegistryMetadata, b: RegistryMetadata):
    recipe = [("ab" * 32, 100), ("cd" * 32, 50)]
    await a.set_blob_recipe("team/a", _digest(1), recipe)
    await a.set_blob_recipe("team/m", _digest(1), [("ef" * 32, 150)])
    await b.copy_blob_recipe("team/a", "team/m", _digest(1))
    assert await a.blob_recipe("team/m", _digest(1)) == recipe
    assert await a.blob_recipe("team/a", _digest(1)) == recipe
    # A source without a recipe of its own: the mount has none either (the store's).
    await b.copy_blob_recipe("team/none", "team/m", _digest(1))
    assert await a.blob_recipe("team/m", _digest(1)) is None


# --- generation ---------------------------------------------------------------------------
# Backends that can tell cheaply keep the token still while nothing commits (SQLite's
# data_version); the others may return a new value on every call (the protocol allows it:
# it only costs a revalidation), so only moving is asserted for every backend.
_PRECISE_GENERATION = {"sqlite"}


async def test_generation_moves_with_every_commit_through_any_instance(
    a: RegistryMetadata, b: RegistryMetadata, request: pytest.FixtureRequest
):
    before_a, before_b = a.generation(), b.generation()
    if request.node.callspec.params["opener"] in _PRECISE_GENERATION:
        assert a.generation() == before_a  # nothing committed: equal tokens
    await a.put_manifest(_record("app", 1), ("latest",))
    after_a, after_b = a.generation(), b.generation()
    assert after_a != before_a  # its own writes too
    assert after_b != before_b
    await b.delete_tag("app", "latest")
    assert a.generation() != after_a
    assert b.generation() != after_b


# --- concurrency and lifetime -------------------------------------------------------------
async def test_writes_from_two_instances_at_once_all_land(a: RegistryMetadata, b: RegistryMetadata):
    await asyncio.gather(
        *(m.put_manifest(_record("busy", i), (f"t{i}",)) for i in range(40)
          for m in [(a, b)[i % 2]]),
        *(m.ensure_repository(f"r{i}") for i in range(20) for m in [(b, a)[i % 2]]),
    )
    assert len(await a.tags("busy", None, 100)) == 40
    assert len(await b.repositories(None, 100)) == 21


async def test_close_refuses_later_calls_and_leaves_other_instances_working(
    a: RegistryMetadata, b: RegistryMetadata
):
    await a.ensure_repository("app")
    pending = a.repository_exists("app")
    closing = asyncio.ensure_future(a.close())
    await closing
    with pytest.raises(StoreClosed):
        await pending
    with pytest.raises(StoreClosed):
        await a.resolve_tag("app", "latest")
    with pytest.raises(StoreClosed):
        a.generation()
    await a.close()
    assert await b.repository_exists("app")


async def test_calls_started_before_close_finish(a: RegistryMetadata):
    calls = [asyncio.ensure_future(a.ensure_repository(f"r{i}")) for i in range(10)]
    await asyncio.sleep(0)  # started
    await a.close()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []  # none met a closed store


async def test_sqlite_a_write_by_another_process_is_read_at_once(tmp_path: Path):
    """Two real processes on one SQLite file (the suite's instances share a process)."""
    a = await SqliteMetadata.open(tmp_path / "registry.db")
    generation = a.generation()
    script = textwrap.dedent(f"""
        import asyncio
        from pathlib import Path
        from registry.server.metadata import ManifestRecord
        from registry.server.metadata_sqlite import SqliteMetadata

        async def main():
            meta = await SqliteMetadata.open(Path({str(tmp_path / "registry.db")!r}))
            await meta.put_manifest(
                ManifestRecord("app", {_digest(5)!r}, "application/x", 5), ("latest",))
            await meta.close()

        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script,
                                                stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert a.generation() != generation
    assert await a.resolve_tag("app", "latest") == _digest(5)
    assert (await a.get_manifest("app", _digest(5))) == ManifestRecord(
        "app", _digest(5), "application/x", 5)
    await a.close()


# --- retention ----------------------------------------------------------------------------
INDEX = "application/vnd.oci.image.index.v1+json"


async def test_tag_records_carry_push_and_pull_times_and_pulls_only_move_forward(
    a: RegistryMetadata, b: RegistryMetadata
):
    await a.put_manifest(_record("app", 1, references=()), ("v1", "latest"))
    [latest, v1] = await b.tag_records("app")
    assert (latest.tag, v1.tag, v1.digest, v1.pulled) == ("latest", "v1", _digest(1), None)
    await a.record_pulls([("app", _digest(1), 200.0), ("app", _digest(9), 1.0)])  # 9: unknown
    await b.record_pulls([("app", _digest(1), 100.0)])  # an older note never wins
    assert {t.pulled for t in await a.tag_records("app")} == {200.0}
    await b.put_manifest(_record("app", 1, references=()), ("v2",))  # pushed again: pull stays
    assert {t.pulled for t in await a.tag_records("app")} == {200.0}
    assert (await a.tag_records("app"))[2].pushed >= v1.pushed


async def test_collect_takes_tags_unchanged_since_read_then_untagged_manifests(
    a: RegistryMetadata, b: RegistryMetadata
):
    await a.put_manifest(_record("app", 1, references=(_digest(101),)), ("old",))
    await a.put_manifest(_record("app", 2, references=(_digest(102),)), ("moved",))
    await a.put_manifest(_record("app", 3, references=(_digest(103),)), ("kept",))
    read = {t.tag: t for t in await b.tag_records("app")}
    await a.put_manifest(_record("app", 4, references=()), ("moved",))  # moved since read
    dry = await b.collect("app", [read["old"], read["moved"]], 1e12, dry_run=True)
    assert dry.tags == [("old", _digest(1))]
    assert sorted(d for d, _ in dry.manifests) == [_digest(1), _digest(2)]
    assert dry.referenced == {_digest(3), _digest(4), _digest(103)}
    assert await a.resolve_tag("app", "old") == _digest(1)  # dry: nothing changed
    done = await b.collect("app", [read["old"], read["moved"]], 1e12)
    assert (done.tags, done.manifests, done.referenced) == (dry.tags, dry.manifests, dry.referenced)
    assert await a.resolve_tag("app", "old") is None and await a.get_manifest("app", _digest(2)) is None
    # Nothing older than the cutoff: untagged manifests stay.
    await a.delete_tag("app", "kept")
    assert (await b.collect("app", [], 0.0)).manifests == []


async def test_collect_keeps_what_an_index_lists_and_referrers_of_kept_subjects(
    a: RegistryMetadata, b: RegistryMetadata
):
    await a.put_manifest(_record("app", 1, references=()))  # a child, untagged
    await a.put_manifest(ManifestRecord("app", _digest(2), INDEX, 10, references=(_digest(1),)), ("v1",))
    await a.put_manifest(_record("app", 3, references=()), ("img",))
    await a.put_manifest(_record("app", 4, subject=_digest(3), references=()))  # a referrer
    assert (await b.collect("app", [], 1e12)).manifests == []
    await a.delete_tag("app", "v1")
    await a.delete_tag("app", "img")
    gone = await b.collect("app", [], 1e12)
    assert {d for d, _ in gone.manifests} == {_digest(1), _digest(2), _digest(3), _digest(4)}
    assert gone.referenced == set()


async def test_an_index_whose_manifests_are_gone_is_refused_with_nothing_written(
    a: RegistryMetadata, b: RegistryMetadata
):
    from registry.server.metadata import ManifestsMissing

    await a.put_manifest(_record("app", 1, references=()))
    with pytest.raises(ManifestsMissing) as err:
        await b.put_manifest(
            ManifestRecord("app", _digest(2), INDEX, 10, references=(_digest(1), _digest(7))), ("v1",))
    assert err.value.digests == [_digest(7)]
    assert await a.resolve_tag("app", "v1") is None and await a.get_manifest("app", _digest(2)) is None


async def test_an_index_may_list_blobs_named_as_blob_entries(a: RegistryMetadata, b: RegistryMetadata):
    """BuildKit's registry cache lists layers in an index: the entries the caller found
    as blobs are not required to be manifests, and count as referenced."""
    from registry.server.metadata import ManifestsMissing

    await a.put_manifest(_record("app", 1, references=()))
    index = ManifestRecord("app", _digest(2), INDEX, 10, references=(_digest(1), _digest(50), _digest(51)),
                           blob_entries=(_digest(50), _digest(51)))
    await b.put_manifest(index, ("cache",))
    assert await a.resolve_tag("app", "cache") == _digest(2)
    assert {_digest(50), _digest(51)} <= (await a.collect("app", [], 0.0, dry_run=True)).referenced
    with pytest.raises(ManifestsMissing) as err:  # the other entries still must be manifests
        await b.put_manifest(dataclasses.replace(index, digest=_digest(3), references=(_digest(7), _digest(50))))
    assert err.value.digests == [_digest(7)]


async def test_references_unknown_until_set(a: RegistryMetadata, b: RegistryMetadata):
    await a.put_manifest(_record("app", 1))  # references=None: not known
    await a.put_manifest(_record("app", 2, references=(_digest(102),)))
    assert await b.unknown_references("app", 10) == [_digest(1)]
    await b.set_references("app", _digest(1), (_digest(101),))
    await b.set_references("app", _digest(9), (_digest(109),))  # not a manifest: ignored
    assert await a.unknown_references("app", 10) == []
    assert (await a.collect("app", [], 0.0, dry_run=True)).referenced == {
        _digest(1), _digest(2), _digest(101), _digest(102)}


async def test_renew_manifest_dates_an_old_one_pushed_now_and_says_when_it_was_pushed(
    a: RegistryMetadata, b: RegistryMetadata
):
    import time

    start = time.time()
    await a.put_manifest(_record("app", 1, references=()))
    await a.put_manifest(_record("app", 2, references=()))
    assert await b.renew_manifest("app", _digest(9), time.time()) is None  # not there
    pushed = await b.renew_manifest("app", _digest(1), 0.0)  # pushed since: looked up
    mark = time.time()  # both were pushed before it
    assert pushed is not None and start <= pushed <= mark
    renewed = await b.renew_manifest("app", _digest(2), mark + 3600)  # pushed now
    assert renewed is not None and renewed >= mark
    assert await a.renew_manifest("app", _digest(2), mark) == renewed  # and kept so
    gone = await a.collect("app", [], mark)  # takes those pushed before the mark
    assert [d for d, _ in gone.manifests] == [_digest(1)]
    assert await b.renew_manifest("app", _digest(1), mark + 3600) is None  # taken first
    assert await a.get_manifest("app", _digest(1)) is None  # and not brought back
