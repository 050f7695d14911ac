"""Reads that keep a blob or a manifest from retention for the upload grace, and only for
callers granted push (registry/server/renewals.py), through the HTTP API with the
built-in token server: its htpasswd users get what the access policy
(``testfiles/tokens/access.yaml``) gives them, alice pull and push on ``team/app``, bob
pull only. Each test plays the race a client's push runs: a HEAD (or GET) "is it there?",
a retention run, then the manifest or index PUT that needs what the read found."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from cas import Digest
from registry import oci
from registry.server.retention import RetentionSettings, run_retention
from registry.server.state import REGISTRY, Registry

from .helpers import descriptor, error_codes, push_blob, push_image

TESTFILES = Path(__file__).parent / "testfiles" / "tokens"
REPO = "team/app"
# As configured by default: untagged manifests go after a day, blob links after an hour.
DEFAULTS = RetentionSettings(untagged_delay=86400, upload_grace=3600)
ACCEPT = {"Accept": f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX}"}


class _Ago:
    """``time`` as a module sees it, ``seconds`` behind: what it dates under it is old."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() - self.seconds


def _basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw-{user}".encode()).decode()}


@pytest.fixture
async def client(make_client, tmp_path: Path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(
        f"{u}:{bcrypt.hashpw(b'pw-' + u.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
        for u in ("alice", "bob")))
    policy = tmp_path / "access.yaml"
    shutil.copy(TESTFILES / "access.yaml", policy)
    return await make_client(storage=tmp_path / "storage", auth_htpasswd=htpasswd,
                             auth_token_issue_key=tmp_path / "token.pem",
                             auth_token_issue_policy=policy)


async def bearer(client: Any, user: str) -> dict[str, str]:
    """The token ``user`` gets asking for pull and push on REPO (bob: pull only)."""
    resp = await client.get("/token", params={"service": "pybuild-registry",
                                              "scope": f"repository:{REPO}:pull,push"},
                            headers=_basic(user))
    assert resp.status == 200, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['token']}"}


def reg_of(client: Any) -> Registry:
    return client.app[REGISTRY]


async def retain(client: Any, settings: RetentionSettings = DEFAULTS) -> Any:
    reg = reg_of(client)
    return await run_retention(reg.store, reg.meta, settings)


async def put_manifest(client: Any, ref: str, doc: dict[str, Any], auth: dict[str, str]) -> Any:
    return await client.put(f"/v2/{REPO}/manifests/{ref}", data=json.dumps(doc).encode(),
                            headers={**auth, "Content-Type": doc["mediaType"]})


async def test_a_blob_head_keeps_the_blob_for_the_grace_only_when_the_caller_may_push(
        client, monkeypatch):
    import cas.sqlite_meta

    alice, bob = await bearer(client, "alice"), await bearer(client, "bob")
    client.session.headers.update(alice)
    with monkeypatch.context() as old:  # linked two hours ago: past the grace
        old.setattr(cas.sqlite_meta, "time", _Ago(7200))
        config = await push_blob(client, REPO, b"{}")
        layer = await push_blob(client, REPO, b"a layer")
    # bob may read it, and asks again and again: that keeps nothing.
    for _ in range(3):
        assert (await client.head(f"/v2/{REPO}/blobs/{layer}", headers=bob)).status == 200
    report = await retain(client)
    assert sorted(report.repositories[0].blobs) == sorted([str(config), str(layer)])
    assert (await client.head(f"/v2/{REPO}/blobs/{layer}", headers=bob)).status == 404
    # alice, about to push a manifest, is told the blobs are there: they stay for it.
    with monkeypatch.context() as old:
        old.setattr(cas.sqlite_meta, "time", _Ago(7200))
        await push_blob(client, REPO, b"a layer")
        await push_blob(client, REPO, b"{}")
    for blob in (config, layer):
        assert (await client.head(f"/v2/{REPO}/blobs/{blob}", headers=alice)).status == 200
    assert (await retain(client)).blobs == 0
    await reg_of(client).store.gc(grace=0)
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": descriptor(oci.OCI_CONFIG, b"{}", config),
           "layers": [descriptor(oci.OCI_LAYER_GZIP, b"a layer", layer)]}
    resp = await put_manifest(client, "v1", doc, alice)
    assert resp.status == 201, await resp.text()


async def _old_untagged_image(client: Any, monkeypatch: pytest.MonkeyPatch, layer: bytes) -> tuple[Digest, bytes]:
    """An image whose manifest was pushed by digest two days ago (past the untagged
    delay), its blobs now."""
    import registry.server.metadata_sqlite

    config = await push_blob(client, REPO, b"{}")
    await push_blob(client, REPO, layer)
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": descriptor(oci.OCI_CONFIG, b"{}", config),
           "layers": [descriptor(oci.OCI_LAYER_GZIP, layer)]}
    body = json.dumps(doc).encode()
    digest = Digest.of(body)
    with monkeypatch.context() as old:
        old.setattr(registry.server.metadata_sqlite, "time", _Ago(2 * 86400))
        resp = await client.put(f"/v2/{REPO}/manifests/{digest}", data=body,
                                headers={"Content-Type": oci.OCI_MANIFEST})
        assert resp.status == 201, await resp.text()
    return digest, body


def _index(*children: tuple[Digest, bytes]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
            "manifests": [descriptor(oci.OCI_MANIFEST, body, digest) for digest, body in children]}


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_a_manifest_read_by_digest_keeps_it_for_an_index_only_when_the_caller_may_push(
        client, monkeypatch, method):
    """``docker buildx imagetools create``, skopeo and regctl read each manifest an index
    lists by digest, then PUT the index: a run in between must not take an untagged one
    the push was told is there; a pull-only caller's reads keep nothing."""
    alice, bob = await bearer(client, "alice"), await bearer(client, "bob")
    client.session.headers.update(alice)
    child = await _old_untagged_image(client, monkeypatch, b"arm64")
    for _ in range(3):
        resp = await client.request(method, f"/v2/{REPO}/manifests/{child[0]}", headers={**bob, **ACCEPT})
        assert resp.status == 200
    assert [m.manifests for m in (await retain(client)).repositories] == [[str(child[0])]]
    resp = await put_manifest(client, "multi", _index(child), alice)
    assert resp.status == 400 and await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]
    # The same race, alice reading: the index finds its manifest.
    child = await _old_untagged_image(client, monkeypatch, b"amd64")
    resp = await client.request(method, f"/v2/{REPO}/manifests/{child[0]}", headers={**alice, **ACCEPT})
    assert resp.status == 200
    assert (await retain(client)).manifests == 0
    resp = await put_manifest(client, "multi", _index(child), alice)
    assert resp.status == 201, await resp.text()
    got = await client.get(f"/v2/{REPO}/manifests/multi", headers=ACCEPT)
    assert got.status == 200 and json.loads(await got.read()) == _index(child)


async def test_without_auth_every_read_by_digest_keeps_the_manifest(make_client, monkeypatch, tmp_path):
    """Without auth every caller may push: a HEAD by digest keeps the manifest."""
    client = await make_client(storage=tmp_path / "open")
    import registry.server.metadata_sqlite

    with monkeypatch.context() as old:
        old.setattr(registry.server.metadata_sqlite, "time", _Ago(2 * 86400))
        kept = await push_image(client, "app", "tmp", [b"kept"])
        gone = await push_image(client, "app", "gone", [b"gone"])
    for tag in ("tmp", "gone"):
        assert (await client.delete(f"/v2/app/manifests/{tag}")).status == 202
    assert (await client.head(f"/v2/app/manifests/{kept[0]}", headers=ACCEPT)).status == 200
    reg = reg_of(client)
    report = await run_retention(reg.store, reg.meta, DEFAULTS)
    assert report.repositories[0].manifests == [str(gone[0])]  # nobody asked for it
    assert (await client.head(f"/v2/app/manifests/{kept[0]}", headers=ACCEPT)).status == 200


async def test_a_manifest_taken_between_its_read_and_its_renewal_is_not_found(client, monkeypatch):
    """A run that takes the manifest after the read found it and before the renewal: the
    read answers 404, not a 200 for a manifest that is gone."""
    alice = await bearer(client, "alice")
    client.session.headers.update(alice)
    digest, _ = await _old_untagged_image(client, monkeypatch, b"raced")
    reg = reg_of(client)
    real = reg.meta.renew_manifest
    ran: list[Any] = []

    async def renew_after_a_run(repo: str, digest: str, pushed_before: float) -> float | None:
        ran.append(await run_retention(reg.store, reg.meta, DEFAULTS))
        return await real(repo, digest, pushed_before)

    monkeypatch.setattr(reg.meta, "renew_manifest", renew_after_a_run)
    resp = await client.head(f"/v2/{REPO}/manifests/{digest}", headers=ACCEPT)
    assert resp.status == 404 and ran[0].manifests == 1
    monkeypatch.undo()
    resp = await client.get(f"/v2/{REPO}/manifests/{digest}", headers=ACCEPT)  # not cached
    assert resp.status == 404 and await error_codes(resp) == ["MANIFEST_UNKNOWN"]


async def test_reads_by_digest_ask_the_metadata_once_and_write_only_to_renew(client, monkeypatch):
    """A read by a caller granted push renews only a manifest retention could take within
    the grace; the others stay reads (no metadata write: every process's manifest cache
    stays good), and once a process knows when a manifest counts as pushed, the reads
    after ask the metadata nothing."""
    alice = await bearer(client, "alice")
    client.session.headers.update(alice)
    fresh, _ = await push_image(client, REPO, "v1", [b"fresh"])
    old, _ = await _old_untagged_image(client, monkeypatch, b"old")
    reg = reg_of(client)
    real = reg.meta.renew_manifest
    asked: list[str] = []

    async def counted(repo: str, digest: str, pushed_before: float) -> float | None:
        asked.append(digest)
        return await real(repo, digest, pushed_before)

    monkeypatch.setattr(reg.meta, "renew_manifest", counted)
    before = reg.meta.generation()
    for method in ("HEAD", "GET", "HEAD"):
        resp = await client.request(method, f"/v2/{REPO}/manifests/{fresh}", headers=ACCEPT)
        assert resp.status == 200
    assert asked == [str(fresh)] and reg.meta.generation() == before
    for method in ("HEAD", "GET", "HEAD"):
        resp = await client.request(method, f"/v2/{REPO}/manifests/{old}", headers=ACCEPT)
        assert resp.status == 200
    assert asked == [str(fresh), str(old)] and reg.meta.generation() != before  # renewed once
