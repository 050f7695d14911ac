"""Retention in one registry app over a real cas store: untagged manifests and the blob
links nothing references go (after the delay and the upload grace), index children and
referrers of kept subjects stay, policies choose tags, and each protection that keeps a
racing push whole is checked by playing the race step by step."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import pytest

from cas import Digest
from registry import oci
from registry.server import ServerConfig, make_app
from registry.server.pull_log import PullLog
from registry.server.retention import RetentionSettings, run_retention
from registry.server.retention_policy import parse_policies
from registry.server.state import REGISTRY, Registry
from testkit.event_sink import EventSink

from .helpers import descriptor, error_codes, push_blob, push_image

ACCEPT = {"Accept": f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX}"}
NOW = RetentionSettings(untagged_delay=0, upload_grace=0)  # nothing is too young


def reg_of(client: Any) -> Registry:
    return client.app[REGISTRY]


async def retain(client: Any, settings: RetentionSettings = NOW, **kw: Any):
    reg = reg_of(client)
    return await run_retention(reg.store, reg.meta, settings, **kw)


async def linked(client: Any, repo: str) -> set[str]:
    return {str(d) for d in await reg_of(client).store.linked(f"repo:{repo}")}


async def status(client: Any, repo: str, ref: str) -> int:
    return (await client.get(f"/v2/{repo}/manifests/{ref}", headers=ACCEPT)).status


def layers_of(body: bytes) -> set[str]:
    doc = json.loads(body)
    return {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}


async def put_manifest(client: Any, repo: str, ref: str, doc: dict[str, Any]) -> Any:
    return await client.put(f"/v2/{repo}/manifests/{ref}", data=json.dumps(doc).encode(),
                            headers={"Content-Type": doc["mediaType"]})


async def test_untagged_manifests_go_then_their_blob_links_then_gc_frees_them(client):
    old, old_body = await push_image(client, "app", "latest", [b"layer one", b"shared"])
    new, new_body = await push_image(client, "app", "latest", [b"layer two", b"shared"])
    only_old = layers_of(old_body) - layers_of(new_body)
    assert only_old == {str(Digest.of(b"layer one"))}
    # Too young for the delay: nothing goes.
    report = await retain(client, RetentionSettings(untagged_delay=3600, upload_grace=0))
    assert report.manifests == 0 and await status(client, "app", str(old)) == 200
    report = await retain(client)
    assert [r.manifests for r in report.repositories] == [[str(old)]]
    assert set(report.repositories[0].blobs) == {str(old), *only_old}
    assert await status(client, "app", str(old)) == 404
    assert await status(client, "app", "latest") == 200
    assert await linked(client, "app") == {str(new), *layers_of(new_body)}
    gc = await reg_of(client).store.gc(grace=0)
    assert gc.blobs_removed == 2
    assert await reg_of(client).store.stat(Digest.of(b"layer one")) is None
    for blob in layers_of(new_body):
        assert (await client.get(f"/v2/app/blobs/{blob}")).status == 200
    assert (await reg_of(client).store.fsck()).ok


async def test_blob_links_younger_than_the_upload_grace_stay(client):
    await push_blob(client, "app", b"uploaded, manifest not pushed yet")
    report = await retain(client, RetentionSettings(untagged_delay=0, upload_grace=3600))
    assert report.blobs == 0
    assert await linked(client, "app") == {str(Digest.of(b"uploaded, manifest not pushed yet"))}
    report = await retain(client)
    assert report.blobs == 1 and await linked(client, "app") == set()


async def test_index_children_and_referrers_of_kept_subjects_stay(client):
    child, child_body = await push_image(client, "multi", "tmp", [b"arm"])
    assert (await client.delete("/v2/multi/manifests/tmp")).status == 202  # untagged child
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
             "manifests": [descriptor(oci.OCI_MANIFEST, child_body, child)]}
    assert (await put_manifest(client, "multi", "v1", index)).status == 201
    subject, subject_body = await push_image(client, "multi", "img", [b"img"])
    sbom = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": "application/x-sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": str(Digest.of(b"{}")), "size": 2, "data": "e30="},
            "layers": [descriptor("application/x-sbom", b"sbom", await push_blob(client, "multi", b"sbom"))],
            "subject": descriptor(oci.OCI_MANIFEST, subject_body, subject)}
    resp = await put_manifest(client, "multi", str(Digest.of(json.dumps(sbom).encode())), sbom)
    assert resp.status == 201
    sbom_digest = resp.headers["Docker-Content-Digest"]
    report = await retain(client)
    assert report.manifests == 0 and report.blobs == 0
    for ref in (str(child), sbom_digest, "v1", "img"):
        assert await status(client, "multi", ref) == 200
    # The index untagged: it goes, then its child; the subject untagged: its referrer too.
    assert (await client.delete("/v2/multi/manifests/v1")).status == 202
    assert (await client.delete("/v2/multi/manifests/img")).status == 202
    report = await retain(client)
    index_digest = str(Digest.of(json.dumps(index).encode()))
    assert set(report.repositories[0].manifests) == {index_digest, str(child), str(subject), sbom_digest}
    assert await linked(client, "multi") == set()


async def test_dry_run_lists_what_would_go_and_changes_nothing(client):
    for n in range(4):
        await push_image(client, "app", str(n), [f"layer {n}".encode()])
    settings = dataclasses.replace(NOW, policies=parse_policies(
        [{"repositories": "app", "keep": [{"last": 2}]}]))
    dry = await retain(client, settings, dry_run=True)
    assert dry.dry_run and sorted(dry.repositories[0].tags) == ["0", "1"]
    # the config is shared by all four: the manifests and their own layers go
    assert len(dry.repositories[0].manifests) == 2 and len(dry.repositories[0].blobs) == 4
    for n in range(4):
        assert await status(client, "app", str(n)) == 200
    done = await retain(client, settings)
    assert done.to_json()["repositories"] == dry.to_json()["repositories"]
    assert [await status(client, "app", str(n)) for n in range(4)] == [404, 404, 200, 200]


async def test_policies_keep_last_n_matching_tags_and_recent_pulls(client):
    for n in range(6):
        await push_image(client, "app", str(n), [f"layer {n}".encode()])
    await push_image(client, "app", "latest", [b"layer 5"])
    await push_image(client, "app", "dev-1", [b"dev"])
    await push_image(client, "other", "1", [b"other"])  # no policy: kept
    reg = reg_of(client)
    reg.pulls = PullLog()
    assert await status(client, "app", "1") == 200  # pulled: kept by pulled_within
    assert await reg.pulls.flush(reg.meta) == 1
    policies = parse_policies([{"repositories": ["app", "team/**"], "keep": [
        {"tags": "latest"},
        {"tags": "re:^[0-9]+$", "last": 2},
        {"pulled_within": "7d"},
    ]}])
    report = await retain(client, dataclasses.replace(NOW, policies=policies))
    assert sorted(report.repositories[0].tags) == ["0", "2", "3", "dev-1"]
    tags = (await (await client.get("/v2/app/tags/list")).json())["tags"]
    assert sorted(tags) == ["1", "4", "5", "latest"]
    assert (await (await client.get("/v2/other/tags/list")).json())["tags"] == ["1"]


async def test_a_tag_pushed_again_while_retention_decides_stays(client):
    await push_image(client, "app", "1", [b"one"])
    await push_image(client, "app", "2", [b"two"])
    reg = reg_of(client)
    stale = await reg.meta.tag_records("app")  # what a run read before the push below
    await push_image(client, "app", "1", [b"one again"])
    result = await reg.meta.collect("app", stale, time.time() + 3600)
    assert [tag for tag, _ in result.tags] == ["2"]
    assert await status(client, "app", "1") == 200


async def test_a_manifest_pushed_by_digest_and_tagged_later_is_never_lost(client):
    digest, body = await push_image(client, "app", "tmp", [b"layer"])
    assert (await client.delete("/v2/app/manifests/tmp")).status == 202  # pushed by digest
    # Within the delay: kept.
    assert (await retain(client, RetentionSettings(untagged_delay=3600, upload_grace=0))).manifests == 0
    # Past the delay, the record goes; the upload grace keeps its blobs linked, so the
    # tag pushed a moment later brings it back whole.
    report = await retain(client, RetentionSettings(untagged_delay=0, upload_grace=3600))
    assert report.manifests == 1 and report.blobs == 0
    resp = await client.put("/v2/app/manifests/v1", data=body, headers={"Content-Type": oci.OCI_MANIFEST})
    assert resp.status == 201
    await reg_of(client).store.gc(grace=0)
    for blob in layers_of(body):
        assert (await client.get(f"/v2/app/blobs/{blob}")).status == 200
    # Without the grace the same tag push finds its blobs gone: what the grace prevents.
    assert (await client.delete(f"/v2/app/manifests/{digest}")).status == 202
    await retain(client)
    resp = await client.put("/v2/app/manifests/v1", data=body, headers={"Content-Type": oci.OCI_MANIFEST})
    assert resp.status == 400 and "MANIFEST_BLOB_UNKNOWN" in await error_codes(resp)


class _HourAgo:
    """``time`` as cas's metadata sees it, an hour behind: links made under it are old."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return time.time() - 3600


async def test_a_blob_head_or_mount_keeps_the_blob_for_the_upload_grace(client, monkeypatch):
    """docker and skopeo HEAD a blob, skip its upload on a 200 and PUT the manifest later:
    a run in between must not unlink what the HEAD (or a mount) just said is there."""
    import cas.sqlite_meta

    reg = reg_of(client)
    with monkeypatch.context() as old:
        old.setattr(cas.sqlite_meta, "time", _HourAgo())
        config = await push_blob(client, "app", b"{}")
        layer = await push_blob(client, "app", b"base layer")
        base = await push_blob(client, "base", b"mounted layer")
        await push_blob(client, "app", b"mounted layer")
    assert (await client.head(f"/v2/app/blobs/{config}")).status == 200
    assert (await client.head(f"/v2/app/blobs/{layer}")).status == 200
    resp = await client.post(f"/v2/app/blobs/uploads/?mount={base}&from=base")
    assert resp.status == 201
    report = await retain(client, RetentionSettings(untagged_delay=0, upload_grace=60))
    assert [r.repository for r in report.repositories] == ["base"]  # nothing asked there
    await reg.store.gc(grace=60)
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": descriptor(oci.OCI_CONFIG, b"{}", config),
           "layers": [descriptor(oci.OCI_LAYER_GZIP, b"base layer", layer),
                      descriptor(oci.OCI_LAYER_GZIP, b"mounted layer", base)]}
    resp = await put_manifest(client, "app", "v1", doc)
    assert resp.status == 201, await resp.text()
    # A blob nobody asked about since is still unlinked by the same run.
    with monkeypatch.context() as old:
        old.setattr(cas.sqlite_meta, "time", _HourAgo())
        await push_blob(client, "app", b"abandoned")
    report = await retain(client, RetentionSettings(untagged_delay=0, upload_grace=60))
    assert report.repositories[0].blobs == [str(Digest.of(b"abandoned"))]


async def test_a_manifest_put_relinks_its_blobs_before_its_metadata_commit(client, monkeypatch):
    """A run between the PUT's checks and its metadata transaction: the blobs' links are
    fresh (the PUT made them again), so the run keeps them though nothing references
    them yet."""
    reg = reg_of(client)
    grace = 0.5
    config = await push_blob(client, "app", b"{}")
    layer = await push_blob(client, "app", b"old layer")
    await asyncio.sleep(grace + 0.1)  # both links are older than the grace now
    real_put = reg.meta.put_manifest
    ran: list[Any] = []

    async def put_after_a_run(record: Any, tags: tuple[str, ...] = ()) -> None:
        ran.append(await run_retention(reg.store, reg.meta, RetentionSettings(0, grace)))
        await real_put(record, tags)

    monkeypatch.setattr(reg.meta, "put_manifest", put_after_a_run)
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": descriptor(oci.OCI_CONFIG, b"{}", config),
           "layers": [descriptor(oci.OCI_LAYER_GZIP, b"old layer", layer)]}
    assert (await put_manifest(client, "app", "v1", doc)).status == 201
    assert ran[0].blobs == 0
    await reg.store.gc(grace=0)
    assert (await client.get(f"/v2/app/blobs/{layer}")).status == 200
    assert (await reg.store.fsck()).ok


async def test_an_index_whose_manifest_went_meanwhile_is_refused_whole(client, monkeypatch):
    reg = reg_of(client)
    child, child_body = await push_image(client, "multi", "tmp", [b"arm"])
    assert (await client.delete("/v2/multi/manifests/tmp")).status == 202
    real_put = reg.meta.put_manifest

    async def put_after_a_run(record: Any, tags: tuple[str, ...] = ()) -> None:
        await run_retention(reg.store, reg.meta, NOW)  # takes the untagged child
        await real_put(record, tags)

    monkeypatch.setattr(reg.meta, "put_manifest", put_after_a_run)
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
             "manifests": [descriptor(oci.OCI_MANIFEST, child_body, child)]}
    resp = await put_manifest(client, "multi", "v1", index)
    assert resp.status == 400 and await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]
    assert await status(client, "multi", "v1") == 404
    assert await reg.meta.tags("multi", None, 10) == []


async def test_scheduled_run_in_the_server_deletes_and_sends_delete_events(aiohttp_client, tmp_path):
    from registry.server.notifications import Endpoint

    with EventSink() as sink:
        config = dataclasses.replace(
            ServerConfig(),
            # a grace long enough that a run cannot take the blobs of "2" before its
            # manifest lands, however busy the machine
            retention_interval=0.2, retention_untagged_delay=0, retention_upload_grace=1.0,
            retention_policies=parse_policies([{"repositories": "app", "keep": [{"last": 1}]}]),
            notifications_endpoints=(Endpoint(name="sink", url=sink.url, timeout=2.0, threshold=1,
                                              backoff=0.05),),
        )
        client = await aiohttp_client(make_app(config, storage=tmp_path / "storage"))
        first, _ = await push_image(client, "app", "1", [b"one"])
        await asyncio.sleep(0.05)  # push times differ
        await push_image(client, "app", "2", [b"two"])
        for _ in range(200):  # bounded: the run comes every 0.2 s
            deletes = [e["target"] for e in sink.events if e["action"] == "delete"]
            if len(deletes) >= 2:
                break
            await asyncio.sleep(0.05)
        assert {"repository": "app", "tag": "1"} in deletes
        assert {"repository": "app", "digest": str(first)} in deletes
        assert await status(client, "app", "1") == 404 and await status(client, "app", "2") == 200
        for _ in range(400):  # once its link is older than the grace, gc takes the blob
            if await reg_of(client).store.stat(Digest.of(b"one")) is None:
                break
            await asyncio.sleep(0.05)
        assert await reg_of(client).store.stat(Digest.of(b"one")) is None  # gc ran too
        assert await status(client, "app", "2") == 200
        await client.close()


@pytest.mark.parametrize("doc, message", [
    ({"retention": {"polices": []}}, "retention_polices"),
    ({"retention": {"policies": [{"repositories": "app", "keep": [{"lst": 3}]}]}},
     "retention.policies[0].keep[0]: unknown key(s) lst"),
    ({"retention": {"policies": [{"repositories": "app", "keep": [{"last": "3"}]}]}},
     "retention.policies[0].keep[0].last"),
    ({"retention": {"policies": [{"repos": "app", "keep": []}]}}, "retention.policies[0]: unknown key(s) repos"),
    ({"retention": {"policies": [{"repositories": "app", "keep": [{"tags": "re:("}]}]}},
     "retention.policies[0].keep[0].tags: invalid regex"),
    ({"retention": {"interval": "soon"}}, "retention_interval"),
])
def test_config_errors_name_the_bad_key(tmp_path, doc, message):
    import yaml

    from registry.server import ConfigError, load_config

    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert message in str(err.value)


def test_config_file_retention_section(tmp_path):
    from registry.server import load_config

    path = tmp_path / "registry.yaml"
    path.write_text("retention:\n  interval: 1h\n  untagged_delay: 2d\n  upload_grace: 30m\n"
                    "  policies:\n    - repositories: app\n      keep: [{tags: latest}]\n")
    config = load_config(path, environ={})
    assert (config.retention_interval, config.retention_untagged_delay,
            config.retention_upload_grace) == (3600, 172800, 1800)
    assert config.retention_policies[0].applies_to("app")
    assert not config.retention_policies[0].applies_to("app/sub")


async def test_pulls_are_noted_in_memory_and_written_in_one_batch(aiohttp_client, tmp_path):
    from registry.server.metadata_sqlite import SqliteMetadata

    policies = parse_policies([{"repositories": "**", "keep": [{"pulled_within": "30d"}]}])
    config = dataclasses.replace(ServerConfig(), retention_policies=policies)  # no scheduled run
    client = await aiohttp_client(make_app(config, storage=tmp_path / "storage"))
    digest, _ = await push_image(client, "app", "v1", [b"one"])
    await push_image(client, "app", "v2", [b"two"])
    reg = reg_of(client)
    writes: list[int] = []
    real = reg.meta.record_pulls

    async def counted(pulls: list[tuple[str, str, float]]) -> None:
        writes.append(len(pulls))
        await real(pulls)

    reg.meta.record_pulls = counted  # type: ignore[method-assign]
    for _ in range(5):
        assert await status(client, "app", "v1") == 200
        assert await status(client, "app", str(digest)) == 200
    assert (await client.head("/v2/app/manifests/v2", headers=ACCEPT)).status == 200  # not a pull
    assert writes == []  # nothing written on the GET path
    await client.close()  # shutdown writes what was noted, in one transaction
    assert writes == [1]
    meta = await SqliteMetadata.open(tmp_path / "storage" / "registry.db")
    try:
        pulled = {t.tag: t.pulled for t in await meta.tag_records("app")}
    finally:
        await meta.close()
    assert pulled["v1"] is not None and pulled["v2"] is None


async def test_pulls_are_recorded_before_any_retention_is_configured(aiohttp_client, tmp_path):
    # A registry run for months without retention, then given a `pulled_within` rule:
    # the rule must find the pulls of those months, not take every image as never pulled.
    from registry.server.metadata_sqlite import SqliteMetadata

    client = await aiohttp_client(make_app(ServerConfig(), storage=tmp_path / "storage"))
    await push_image(client, "app", "pulled", [b"one"])
    await push_image(client, "app", "idle", [b"two"])
    assert await status(client, "app", "pulled") == 200
    await client.close()  # shutdown writes the pull times noted
    meta = await SqliteMetadata.open(tmp_path / "storage" / "registry.db")
    try:
        records = await meta.tag_records("app")
    finally:
        await meta.close()
    pulled = {t.tag: t.pulled for t in records}
    assert pulled["pulled"] is not None and pulled["idle"] is None
    policy = parse_policies([{"repositories": "**", "keep": [{"pulled_within": "30d"}]}])[0]
    assert policy.keep[0].keeps(records, time.time()) == {"pulled"}


async def test_a_read_only_registry_records_no_pulls(aiohttp_client, tmp_path):
    client = await aiohttp_client(make_app(dataclasses.replace(ServerConfig(), read_only=True),
                                           storage=tmp_path / "storage"))
    assert reg_of(client).pulls is None
    await client.close()


def test_storage_retention_command_dry_run_then_run(tmp_path):
    from aiohttp.test_utils import TestClient, TestServer
    from click.testing import CliRunner

    from registry.retention_cmd import storage

    storage_dir = tmp_path / "storage"

    async def populate() -> None:
        client = TestClient(TestServer(make_app(ServerConfig(), storage=storage_dir)))
        await client.start_server()
        try:
            for n in range(3):
                await push_image(client, "app", str(n), [f"layer {n}".encode()])
        finally:
            await client.close()

    asyncio.run(populate())
    config = tmp_path / "registry.yaml"
    config.write_text("retention:\n  policies:\n    - repositories: app\n      keep: [{last: 1}]\n")
    args = ["retention", "--storage", str(storage_dir), "--config", str(config),
            "--untagged-delay", "0", "--upload-grace", "0s"]
    dry = CliRunner().invoke(storage, [*args, "--dry-run"], env={"PYBUILD_CONFIG": ""})
    assert dry.exit_code == 0, dry.output
    assert "would delete tag app:0\n" in dry.output and "would delete tag app:1\n" in dry.output
    assert dry.output.splitlines()[-1] == "would delete 2 tag(s), 2 manifest(s); would unlink 4 blob(s)"
    done = CliRunner().invoke(storage, [*args, "--json"], env={"PYBUILD_CONFIG": ""})
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["tags"], report["manifests"], report["blobs"]) == (2, 2, 4)
    assert report["gc"]["blobs_removed"] == 4
    # gc says what it kept only for the grace: a blob stored unlinked a moment ago.

    async def store_unlinked() -> None:
        from cas import Store

        async with await Store.open(storage_dir) as s:
            await s.put(b"not linked yet")

    asyncio.run(store_unlinked())
    young = CliRunner().invoke(storage, [*args[:-1], "1h"], env={"PYBUILD_CONFIG": ""})
    assert young.output.splitlines()[-1].endswith(
        "; gc freed 0 bytes, kept 1 unreferenced blob(s) (14 bytes) younger than the upload grace"
    ), young.output
    bad = CliRunner().invoke(storage, [*args[:-4], "--untagged-delay", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration such as 90s, 30m, 48h or 7d" in bad.output


def test_storage_retention_on_a_directory_without_a_registry_is_an_error(tmp_path):
    from click.testing import CliRunner

    from registry.retention_cmd import storage

    for where in (tmp_path / "mistyped", tmp_path):
        before = sorted(tmp_path.rglob("*"))
        result = CliRunner().invoke(storage, ["retention", "--storage", str(where), "--dry-run"],
                                    env={"PYBUILD_CONFIG": ""})
        assert result.exit_code == 1, result.output
        assert f"{where} holds no registry (no registry.db)" in result.output
        assert "--storage" in result.output
        assert sorted(tmp_path.rglob("*")) == before  # no store made there


async def test_manifests_stored_without_references_are_read_and_unreadable_ones_keep_all(client):
    from registry.server.metadata import ManifestRecord

    reg = reg_of(client)
    config = await push_blob(client, "legacy", b"{}")
    layer = await push_blob(client, "legacy", b"kept layer")
    await push_blob(client, "legacy", b"stray")
    body = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                       "config": descriptor(oci.OCI_CONFIG, b"{}", config),
                       "layers": [descriptor(oci.OCI_LAYER_GZIP, b"kept layer", layer)]}).encode()
    digest = Digest.of(body)
    # As a store from before references were recorded (or the pull-through cache) has it.
    await reg.store.put(body, expected=digest, link="repo:legacy")
    await reg.meta.put_manifest(ManifestRecord("legacy", str(digest), oci.OCI_MANIFEST, len(body)), ("v1",))
    assert await reg.meta.unknown_references("legacy", 10) == [str(digest)]
    report = await retain(client)
    assert report.repositories[0].blobs == [str(Digest.of(b"stray"))]
    assert await linked(client, "legacy") == {str(digest), *layers_of(body)}
    # An index whose bytes cannot be read: nothing untagged and no blob goes this run.
    child, _ = await push_image(client, "broken", "tmp", [b"child"])
    assert (await client.delete("/v2/broken/manifests/tmp")).status == 202
    await reg.meta.put_manifest(ManifestRecord("broken", str(Digest.of(b"gone")), oci.OCI_INDEX, 4), ("v1",))
    report = await retain(client)
    assert [r.repository for r in report.repositories] == []
    assert await status(client, "broken", str(child)) == 200
