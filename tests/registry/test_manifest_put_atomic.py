"""A manifest PUT is all or nothing: every reference is checked before anything is
written, so a refused PUT changes no blob link, tag or referrer."""

from __future__ import annotations

import base64
import json

import pytest

from cas import Digest
from registry import oci
from registry.server.state import REGISTRY

from .helpers import descriptor, push_blob, push_image


def _carried(media_type: str, data: bytes) -> dict[str, object]:
    return {**descriptor(media_type, data), "data": base64.b64encode(data).decode()}


async def _state(client, repo: str, digests: list[Digest], subject: Digest) -> object:
    blobs = [(await client.head(f"/v2/{repo}/blobs/{d}")).status for d in digests]
    tags = await (await client.get(f"/v2/{repo}/tags/list")).json()
    v1 = (await client.head(f"/v2/{repo}/manifests/v1")).headers.get("Docker-Content-Digest")
    referrers = await (await client.get(f"/v2/{repo}/referrers/{subject}")).json()
    return blobs, tags, v1, referrers["manifests"]


@pytest.mark.parametrize("fault", ["missing-layer", "wrong-size", "missing-index-entry"])
async def test_refused_manifest_put_changes_no_link_tag_or_referrer(client, fault):
    base, _ = await push_image(client, "atomic", "v1", [b"base-layer"])
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    carried_layer = b"carried in the manifest itself"
    linked = await push_blob(client, "atomic", b"a linked layer")
    layers = [_carried(oci.OCI_LAYER_GZIP, carried_layer)]
    if fault == "missing-layer":
        layers.append(descriptor(oci.OCI_LAYER_GZIP, b"never pushed"))
    elif fault == "wrong-size":
        layers.append({**descriptor(oci.OCI_LAYER_GZIP, b"a linked layer"), "size": 3})
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": _carried(oci.OCI_CONFIG, config),
        "layers": layers,
        "subject": {"mediaType": oci.OCI_MANIFEST, "digest": str(base), "size": 1},
    }
    if fault == "missing-index-entry":
        doc = {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [descriptor(oci.OCI_MANIFEST, b"no such manifest")],
            "subject": doc["subject"],
        }
    watched = [Digest.of(config), Digest.of(carried_layer), Digest.of(json.dumps(doc).encode())]
    before = await _state(client, "atomic", watched, base)
    assert before[0] == [404, 404, 404] and before[2] == str(base)
    resp = await client.put(
        "/v2/atomic/manifests/v1?tag=v2", data=json.dumps(doc).encode(),
        headers={"Content-Type": doc["mediaType"]},
    )
    assert resp.status == 400, await resp.text()
    assert await _state(client, "atomic", watched, base) == before
    assert (await client.head(f"/v2/atomic/blobs/{linked}")).status == 200


async def test_links_are_taken_back_when_the_manifest_record_fails(client):
    reg = client.server.app[REGISTRY]
    data = b"carried"
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": _carried(oci.OCI_CONFIG, data),
        "layers": [],
    }
    body = json.dumps(doc).encode()

    async def broken(*args: object, **kwargs: object) -> None:
        raise OSError("the metadata database went away")

    reg.meta.put_manifest = broken  # type: ignore[method-assign]
    resp = await client.put("/v2/undo/manifests/t", data=body)
    assert resp.status == 500
    for digest in (Digest.of(data), Digest.of(body)):
        assert (await client.head(f"/v2/undo/blobs/{digest}")).status == 404


async def test_a_gc_without_grace_before_the_links_takes_no_pushed_manifest(client, monkeypatch):
    # A manifest's bytes (and the blobs it carries) are stored unlinked, then linked with
    # its references in one transaction. A GC with --grace 0 in between takes them (no
    # holder links them yet); the PUT stores them again and links them, and succeeds.
    reg = client.server.app[REGISTRY]
    link_all = reg.store.link_all
    collected = []

    async def gc_then_link_all(holder, digests):
        if not collected:
            collected.append((await reg.store.gc(grace=0)).blobs_removed)
        return await link_all(holder, digests)

    monkeypatch.setattr(reg.store, "link_all", gc_then_link_all)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    await push_blob(client, "gc", config)
    carried = b"a layer carried in the manifest"
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": descriptor(oci.OCI_CONFIG, config),
           "layers": [_carried(oci.OCI_LAYER_GZIP, carried)]}
    body = json.dumps(doc).encode()
    resp = await client.put("/v2/gc/manifests/v1", data=body,
                            headers={"Content-Type": oci.OCI_MANIFEST})
    assert resp.status == 201, await resp.text()
    assert collected == [2]  # the manifest's bytes and the carried layer: stored again
    got = await client.get("/v2/gc/manifests/v1", headers={"Accept": oci.OCI_MANIFEST})
    assert got.status == 200 and await got.read() == body
    got = await client.get(f"/v2/gc/blobs/{Digest.of(carried)}")
    assert got.status == 200 and await got.read() == carried
