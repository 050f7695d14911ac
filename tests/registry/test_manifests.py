"""Manifests, tags, referrers and the catalog through the HTTP API."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cas import Digest
from registry import oci
from registry.server.manifests import MAX_MANIFEST_BYTES
from registry.server.state import REGISTRY

from .helpers import descriptor, error_codes, push_blob, push_docker_list, push_image

TESTFILES = Path(__file__).parent / "testfiles"
ALL_TYPES = f"{oci.OCI_MANIFEST}, {oci.OCI_INDEX}, {oci.DOCKER_MANIFEST}, {oci.DOCKER_MANIFEST_LIST}"


async def test_put_get_head_by_tag_and_digest(client):
    digest, body = await push_image(client, "lib/app", "v1", [b"l1", b"l2"])
    for ref in ("v1", str(digest)):
        resp = await client.get(f"/v2/lib/app/manifests/{ref}", headers={"Accept": ALL_TYPES})
        assert resp.status == 200
        assert await resp.read() == body
        assert resp.headers["Content-Type"] == oci.OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == str(digest)
        head = await client.head(f"/v2/lib/app/manifests/{ref}")
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(body))
        assert head.headers["Docker-Content-Digest"] == str(digest)
    # Manifests are blobs of the repository too.
    assert await (await client.get(f"/v2/lib/app/blobs/{digest}")).read() == body


async def test_manifest_bytes_are_kept_exactly(client):
    await push_blob(client, "exact", b"{}")
    body = (
        b'{ "schemaVersion":2,  "mediaType":"application/vnd.oci.image.manifest.v1+json",\n'
        b'"config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":"'
        + str(oci.EMPTY_JSON_DIGEST).encode()
        + b'","size":2},"layers":[] ,"zzz":{"custom":[1,2]}}'
    )
    resp = await client.put("/v2/exact/manifests/t", data=body)
    assert resp.status == 201, await resp.text()
    assert await (await client.get("/v2/exact/manifests/t")).read() == body


async def test_docker_clients_send_several_accept_headers(client):
    await push_image(client, "d", "latest", [b"x"], media_type=oci.DOCKER_MANIFEST)
    resp = await client.get(
        "/v2/d/manifests/latest",
        headers=[("Accept", oci.DOCKER_MANIFEST), ("Accept", oci.DOCKER_MANIFEST_LIST), ("Accept", oci.OCI_MANIFEST)],
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == oci.DOCKER_MANIFEST
    assert (await client.get("/v2/d/manifests/latest", headers={"Accept": "*/*"})).status == 200


async def test_accept_without_the_stored_type_is_404(client):
    await push_image(client, "neg", "latest", [b"x"])
    resp = await client.get("/v2/neg/manifests/latest", headers={"Accept": oci.DOCKER_MANIFEST})
    assert resp.status == 404
    assert await error_codes(resp) == ["MANIFEST_UNKNOWN"]


async def test_docker_schema2_is_served_whatever_accept_lists(client):
    # As CNCF Distribution: only OCI types are held back from a client that does not
    # list them; a schema 2 manifest or list goes out as it is (by digest, any Accept).
    digest, body = await push_image(client, "d2", "v1", [b"x"], media_type=oci.DOCKER_MANIFEST)
    list_digest, _ = await push_docker_list(client, "d2", "list", ["linux/arm64"])
    for ref, media_type in ((digest, oci.DOCKER_MANIFEST), ("v1", oci.DOCKER_MANIFEST),
                            (list_digest, oci.DOCKER_MANIFEST_LIST)):
        for accept in (oci.OCI_MANIFEST, oci.OCI_INDEX, "application/json"):
            for method in ("GET", "HEAD"):
                resp = await client.request(method, f"/v2/d2/manifests/{ref}", headers={"Accept": accept})
                assert resp.status == 200, (ref, accept, await resp.text())
                assert resp.headers["Content-Type"] == media_type
    resp = await client.get(f"/v2/d2/manifests/{digest}", headers={"Accept": oci.OCI_MANIFEST})
    assert await resp.read() == body


async def test_manifest_list_by_tag_without_list_in_accept_is_its_linux_amd64_manifest(client):
    # A client that takes schema 2 manifests but not lists (older than lists) pulls the
    # list's linux/amd64 manifest, under that manifest's digest: CNCF Distribution's answer.
    list_digest, children = await push_docker_list(client, "old", "latest", ["linux/arm64", "linux/amd64"])
    for method in ("GET", "HEAD"):
        resp = await client.request(method, "/v2/old/manifests/latest", headers={"Accept": oci.DOCKER_MANIFEST})
        assert resp.status == 200
        assert resp.headers["Content-Type"] == oci.DOCKER_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == str(children["linux/amd64"])
    # By digest, and to a client that lists it, the list itself.
    resp = await client.get(f"/v2/old/manifests/{list_digest}", headers={"Accept": oci.DOCKER_MANIFEST})
    assert resp.headers["Docker-Content-Digest"] == str(list_digest)
    resp = await client.get("/v2/old/manifests/latest", headers={"Accept": ALL_TYPES})
    assert resp.headers["Docker-Content-Digest"] == str(list_digest)
    # A list without linux/amd64 has nothing such a client can run.
    await push_docker_list(client, "old", "arm", ["linux/arm64"])
    resp = await client.get("/v2/old/manifests/arm", headers={"Accept": oci.DOCKER_MANIFEST})
    assert resp.status == 404
    assert await error_codes(resp) == ["MANIFEST_UNKNOWN"]


async def test_index_by_tag_to_a_client_of_images_only_is_its_linux_amd64_manifest(client):
    # A client whose Accept lists the image type but no index type gets, by tag, the
    # index's linux/amd64 image (its own type and digest), never the index it cannot use.
    children = {}
    for arch in ("arm64", "amd64"):
        digest, body = await push_image(client, "only", f"img-{arch}", [arch.encode()])
        children[arch] = (digest, body)
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {**descriptor(oci.OCI_MANIFEST, body), "platform": {"architecture": arch, "os": "linux"}}
        for arch, (_, body) in children.items()
    ]}
    index_body = json.dumps(index).encode()
    resp = await client.put("/v2/only/manifests/multi", data=index_body,
                            headers={"Content-Type": oci.OCI_INDEX})
    assert resp.status == 201
    amd64_digest, amd64_body = children["amd64"]
    for method in ("GET", "HEAD"):
        resp = await client.request(method, "/v2/only/manifests/multi", headers={"Accept": oci.OCI_MANIFEST})
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == oci.OCI_MANIFEST
        assert resp.headers["Docker-Content-Digest"] == str(amd64_digest)
        assert resp.headers["Content-Length"] == str(len(amd64_body))
        if method == "GET":
            assert await resp.read() == amd64_body
    # By digest, the index is never rewritten: the client did not ask for what it lists.
    resp = await client.get(f"/v2/only/manifests/{Digest.of(index_body)}", headers={"Accept": oci.OCI_MANIFEST})
    assert resp.status == 404
    # A manifest list whose linux/amd64 image is of a type Accept does not list either:
    # 404 naming the type to add, not the list.
    await push_docker_list(client, "only", "docker", ["linux/amd64"])
    for method in ("GET", "HEAD"):
        resp = await client.request(method, "/v2/only/manifests/docker", headers={"Accept": oci.OCI_MANIFEST})
        assert resp.status == 404
        if method == "GET":
            doc = await resp.json(content_type=None)
            assert doc["errors"][0]["code"] == "MANIFEST_UNKNOWN"
            assert f"add {oci.DOCKER_MANIFEST_LIST} to Accept" in doc["errors"][0]["message"]


async def test_unknown_manifest_and_tag(client):
    await push_image(client, "known", "v1", [b"x"])
    resp = await client.get("/v2/known/manifests/nope")
    assert resp.status == 404
    assert await error_codes(resp) == ["MANIFEST_UNKNOWN"]
    resp = await client.get(f"/v2/known/manifests/{Digest.of(b'nothing')}")
    assert resp.status == 404
    resp = await client.get("/v2/unknown-repo/manifests/v1")
    assert resp.status == 404


@pytest.mark.parametrize("path", sorted((TESTFILES / "manifests-negative").glob("*.json")), ids=lambda p: p.stem)
async def test_invalid_manifests_are_manifest_invalid(client, path):
    resp = await client.put("/v2/bad/manifests/t", data=path.read_bytes())
    assert resp.status == 400
    assert await error_codes(resp) == ["MANIFEST_INVALID"]
    assert (await client.get("/v2/bad/manifests/t")).status == 404


async def test_missing_blobs_are_reported_each(client):
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    await push_blob(client, "miss", config)
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": descriptor(oci.OCI_CONFIG, config),
        "layers": [descriptor(oci.OCI_LAYER_GZIP, b"absent-1"), descriptor(oci.OCI_LAYER_GZIP, b"absent-2")],
    }
    resp = await client.put("/v2/miss/manifests/t", data=json.dumps(doc).encode())
    assert resp.status == 400
    assert await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN", "MANIFEST_BLOB_UNKNOWN"]


async def test_blob_in_another_repository_does_not_count(client):
    await push_blob(client, "other", b"layer")
    config = b"{}"
    await push_blob(client, "mine", config)
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": descriptor(oci.OCI_EMPTY, config),
        "layers": [descriptor(oci.OCI_LAYER, b"layer")],
    }
    resp = await client.put("/v2/mine/manifests/t", data=json.dumps(doc).encode())
    assert await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_descriptor_size_must_match_blob(client):
    await push_blob(client, "sz", b"{}")
    doc = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
           "config": {**descriptor(oci.OCI_EMPTY, b"{}"), "size": 3}, "layers": []}
    resp = await client.put("/v2/sz/manifests/t", data=json.dumps(doc).encode())
    assert resp.status == 400
    assert await error_codes(resp) == ["MANIFEST_INVALID"]


async def test_oversized_manifest_is_413(client):
    body = b'{"schemaVersion":2,"pad":"' + b"x" * (4 * 1024 * 1024) + b'"}'
    resp = await client.put("/v2/big/manifests/t", data=io.BytesIO(body))
    assert resp.status == 413
    assert await error_codes(resp) == ["MANIFEST_INVALID"]


async def test_digest_reference_must_match_body(client):
    digest, body = await push_image(client, "dg", "t", [b"x"])
    wrong = Digest.of(b"other")
    resp = await client.put(f"/v2/dg/manifests/{wrong}", data=body)
    assert resp.status == 400
    assert await error_codes(resp) == ["DIGEST_INVALID"]
    ok = await client.put(f"/v2/dg/manifests/{digest}", data=body)
    assert ok.status == 201
    sha512 = Digest.of(body, "sha512")
    resp = await client.put(f"/v2/dg/manifests/{sha512}", data=body)
    assert resp.status == 201
    assert resp.headers["Docker-Content-Digest"] == str(sha512)
    assert await (await client.get(f"/v2/dg/manifests/{sha512}")).read() == body


async def test_artifact_with_data_field_subject_and_referrers(client):
    subject_digest, subject_body = await push_image(client, "art", "image", [b"base"])
    await push_blob(client, "art", b"hello\n")
    doc = json.loads((TESTFILES / "oci" / "oci-artifact.json").read_text())
    doc["subject"] = {"mediaType": oci.OCI_MANIFEST, "digest": str(subject_digest), "size": len(subject_body)}
    body = json.dumps(doc).encode()
    resp = await client.put(f"/v2/art/manifests/{Digest.of(body)}", data=body)
    assert resp.status == 201, await resp.text()
    assert resp.headers["OCI-Subject"] == str(subject_digest)
    # The config came in the data field and is now a blob of the repository.
    assert await (await client.get(f"/v2/art/blobs/{oci.EMPTY_JSON_DIGEST}")).read() == b"{}"

    resp = await client.get(f"/v2/art/referrers/{subject_digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == oci.OCI_INDEX
    index = await resp.json(content_type=None)
    assert index["mediaType"] == oci.OCI_INDEX
    assert index["manifests"] == [
        {
            "mediaType": oci.OCI_MANIFEST,
            "digest": str(Digest.of(body)),
            "size": len(body),
            "artifactType": "application/vnd.example.sbom.v1",
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        }
    ]
    filtered = await client.get(f"/v2/art/referrers/{subject_digest}?artifactType=application/vnd.other")
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert (await filtered.json(content_type=None))["manifests"] == []
    matching = await client.get(
        f"/v2/art/referrers/{subject_digest}?artifactType=application/vnd.example.sbom.v1"
    )
    assert len((await matching.json(content_type=None))["manifests"]) == 1
    none = await client.get(f"/v2/art/referrers/{Digest.of(b'no subject')}")
    assert none.status == 200
    assert (await none.json(content_type=None))["manifests"] == []
    assert (await client.get("/v2/art/referrers/sha256:bad")).status == 400


async def test_referrer_without_artifact_type_uses_config_media_type(client):
    subject, _ = await push_image(client, "ref2", "base", [b"b"])
    await push_image(
        client, "ref2", "sig", [b"sig"],
        extra={"subject": {"mediaType": oci.OCI_MANIFEST, "digest": str(subject), "size": 1}},
    )
    index = await (await client.get(f"/v2/ref2/referrers/{subject}")).json(content_type=None)
    assert [m["artifactType"] for m in index["manifests"]] == [oci.OCI_CONFIG]



async def test_referrers_filter_keeps_a_plus_in_the_artifact_type(client):
    # Media types often hold a "+" and never a space: a filter sent unescaped (curl, a
    # hand-built URL) must not lose it to form decoding, and an escaped one still works.
    subject, _ = await push_image(client, "sbom", "base", [b"b"])
    await push_image(
        client, "sbom", "spdx", [b"s"],
        extra={"artifactType": "application/spdx+json",
               "subject": {"mediaType": oci.OCI_MANIFEST, "digest": str(subject), "size": 1}},
    )
    for query in ("artifactType=application/spdx+json", "artifactType=application/spdx%2Bjson",
                  "n=1&artifactType=application%2Fspdx+json"):
        resp = await client.get(f"/v2/sbom/referrers/{subject}?{query}")
        assert resp.headers["OCI-Filters-Applied"] == "artifactType"
        index = await resp.json(content_type=None)
        assert [m["artifactType"] for m in index["manifests"]] == ["application/spdx+json"], query
    other = await client.get(f"/v2/sbom/referrers/{subject}?artifactType=application/spdx%20json")
    assert (await other.json(content_type=None))["manifests"] == []

async def test_referrers_come_in_pages_no_larger_than_a_manifest(client):
    # Spec "Listing Referrers": a Link header when the list cannot be one manifest. Every
    # referrer here carries ~1.3 MiB of annotations, and more of them than are read at once.
    subject, _ = await push_image(client, "many", "base", [b"b"])
    await push_blob(client, "many", b"{}")
    pad = "x" * (1300 << 10)
    pushed = []
    for i in range(40):
        big = i % 13 == 0
        kind = "application/vnd.big" if big else "application/vnd.small"
        body = json.dumps({
            "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "artifactType": kind,
            "config": descriptor(oci.OCI_EMPTY, b"{}"), "layers": [descriptor(oci.OCI_EMPTY, b"{}")],
            "subject": {"mediaType": oci.OCI_MANIFEST, "digest": str(subject), "size": 1},
            "annotations": {"i": str(i), "pad": pad} if big else {"i": str(i)},
        }).encode()
        resp = await client.put(f"/v2/many/manifests/r{i}", data=io.BytesIO(body),
                                headers={"Content-Type": oci.OCI_MANIFEST})
        assert resp.status == 201, await resp.text()
        pushed.append((str(Digest.of(body)), kind))

    async def walk(url: str) -> list[list[str]]:
        pages = []
        while url:
            resp = await client.get(url)
            assert resp.status == 200
            body = await resp.read()
            assert len(body) <= MAX_MANIFEST_BYTES
            pages.append([m["digest"] for m in json.loads(body)["manifests"]])
            link = resp.headers.get("Link", "")
            url = link[1:link.index(">")] if link else ""
            assert not link or link.endswith('>; rel="next"')
        return pages

    pages = await walk(f"/v2/many/referrers/{subject}")
    assert len(pages) == 2  # three big ones do not fit one page
    assert [d for p in pages for d in p] == [d for d, _ in pushed]
    # The filter goes along with the cursor.
    big = await walk(f"/v2/many/referrers/{subject}?artifactType=application/vnd.big")
    assert [len(p) for p in big] == [3, 1]
    assert [d for p in big for d in p] == [d for d, k in pushed if k == "application/vnd.big"]
    assert (await client.get(f"/v2/many/referrers/{subject}?last=sha256:bad")).status == 400


async def test_subject_may_be_pushed_after_its_referrer(client):
    missing_subject = Digest.of(b"not yet pushed")
    await push_image(
        client, "early", "sig", [b"s"],
        extra={"subject": {"mediaType": oci.OCI_MANIFEST, "digest": str(missing_subject), "size": 5}},
    )
    index = await (await client.get(f"/v2/early/referrers/{missing_subject}")).json(content_type=None)
    assert len(index["manifests"]) == 1


async def test_index_needs_its_manifests_in_the_repository(client):
    _, child_body = await push_image(client, "multi", "amd64", [b"a"])
    index = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [
            {**descriptor(oci.OCI_MANIFEST, child_body), "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }
    resp = await client.put("/v2/multi/manifests/latest", data=json.dumps(index).encode(),
                            headers={"Content-Type": oci.OCI_INDEX})
    assert resp.status == 201
    got = await client.get("/v2/multi/manifests/latest", headers={"Accept": oci.OCI_INDEX})
    assert got.headers["Content-Type"] == oci.OCI_INDEX
    index["manifests"].append(descriptor(oci.OCI_MANIFEST, b"missing child"))
    resp = await client.put("/v2/multi/manifests/latest", data=json.dumps(index).encode())
    assert await error_codes(resp) == ["MANIFEST_BLOB_UNKNOWN"]


async def test_nondistributable_layers_need_not_be_pushed(client):
    config = b"{}"
    await push_blob(client, "nd", config)
    doc = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": descriptor(oci.OCI_EMPTY, config),
        "layers": [{**descriptor(oci.OCI_LAYER_NONDISTRIBUTABLE_GZIP, b"windows base"),
                    "urls": ["https://example.invalid/base"]}],
    }
    resp = await client.put("/v2/nd/manifests/t", data=json.dumps(doc).encode())
    assert resp.status == 201, await resp.text()


async def test_tags_in_query_when_pushing_by_digest(client):
    digest, body = await push_image(client, "qt", "first", [b"x"])
    resp = await client.put(f"/v2/qt/manifests/{digest}?tag=a&tag=b", data=body)
    assert resp.status == 201
    assert resp.headers["OCI-Tag"] == "a, b"
    tags = await (await client.get("/v2/qt/tags/list")).json()
    assert tags == {"name": "qt", "tags": ["a", "b", "first"]}


async def test_invalid_tag(client):
    resp = await client.put("/v2/r/manifests/-bad", data=b"{}")
    assert resp.status == 400
    assert await error_codes(resp) == ["TAG_INVALID"]
    resp = await client.put("/v2/r/manifests/" + "a" * 129, data=b"{}")
    assert resp.status == 400


async def test_pulling_a_malformed_tag_is_404(client):
    # The distribution spec's end-3 (GET/HEAD a manifest) fails only with 404; the OCI
    # conformance suite pulls ".INVALID_MANIFEST_NAME" and wants 404, as pushes keep 400.
    await push_image(client, "mt", "t", [b"x"])
    for reference in (".INVALID_MANIFEST_NAME", "-bad", "a" * 129):
        resp = await client.get(f"/v2/mt/manifests/{reference}")
        assert resp.status == 404, reference
        assert await error_codes(resp) == ["MANIFEST_UNKNOWN"]
        assert (await client.head(f"/v2/mt/manifests/{reference}")).status == 404
    resp = await client.get("/v2/mt/manifests/sha256:totallywrong")
    assert resp.status == 400  # a malformed digest stays DIGEST_INVALID (the suite takes both)
    assert await error_codes(resp) == ["DIGEST_INVALID"]


async def test_tag_list_without_n_has_every_tag_as_distribution_answers(client):
    # Distribution (2.8 and 3) lists every tag when no n is given; a client that never
    # looks for a Link header (many scripts and tools) must not see only the first page.
    digest, _ = await push_image(client, "many", "t00000", [b"x"])
    meta = client.server.app[REGISTRY].meta
    record = await meta.get_manifest("many", str(digest))
    names = [f"t{i:05d}" for i in range(25_001)]
    await meta.put_manifest(record, tuple(names))
    resp = await client.get("/v2/many/tags/list")
    assert resp.status == 200 and "Link" not in resp.headers
    assert resp.headers["Content-Type"].startswith("application/json")
    body = json.loads(await resp.read())
    assert body == {"name": "many", "tags": names}
    resp = await client.get("/v2/many/tags/list?last=t00999")
    assert (await resp.json())["tags"] == names[1000:] and "Link" not in resp.headers
    paged = await client.get("/v2/many/tags/list?n=5000")  # asked for: still paged
    assert len((await paged.json())["tags"]) == 1000 and "Link" in paged.headers


async def test_tag_list_paging(client):
    _, body = await push_image(client, "paged", "v0", [b"x"])
    names = ["B", "a", "c", "v0", "V1", "_x", "z9"]
    for tag in names:
        assert (await client.put(f"/v2/paged/manifests/{tag}", data=body)).status == 201
    expected = sorted(set(names))  # ASCIIbetical: uppercase before '_' before lowercase
    resp = await client.get("/v2/paged/tags/list")
    assert (await resp.json())["tags"] == expected
    seen, url = [], "/v2/paged/tags/list?n=3"
    while url:
        resp = await client.get(url)
        seen += (await resp.json())["tags"]
        link = resp.headers.get("Link")
        url = link[1 : link.index(">")] if link else None
    assert seen == expected
    resp = await client.get("/v2/paged/tags/list?n=2&last=a")
    assert (await resp.json())["tags"] == ["c", "v0"]
    zero = await client.get("/v2/paged/tags/list?n=0")
    assert (await zero.json())["tags"] == [] and "Link" not in zero.headers
    bad = await client.get("/v2/paged/tags/list?n=-1")
    assert bad.status == 400
    unknown = await client.get("/v2/nobody/tags/list")
    assert unknown.status == 404
    assert await error_codes(unknown) == ["NAME_UNKNOWN"]


async def test_tags_list_of_a_repository_never_tagged_is_name_unknown(client):
    # As Distribution answers: a repository that holds only blobs (an interrupted push)
    # or only manifests pushed by digest has no tags directory yet (it was 200, no tags).
    await push_blob(client, "blobsonly", b"a layer")
    digest, _ = await push_image(client, "src", "v1", [b"x"])
    await push_image(client, "bydigest", str(digest), [b"x"])
    for repo in ("blobsonly", "bydigest"):
        resp = await client.get(f"/v2/{repo}/tags/list")
        assert resp.status == 404, repo
        assert await error_codes(resp) == ["NAME_UNKNOWN"]
    catalog = await (await client.get("/v2/_catalog")).json()
    assert {"blobsonly", "bydigest"} <= set(catalog["repositories"])
    # Once tagged, it stays known: every tag deleted, and its manifest too, it lists none.
    await push_image(client, "bydigest", "t", [b"x"])
    assert (await client.delete("/v2/bydigest/manifests/t")).status == 202
    resp = await client.get("/v2/bydigest/tags/list")
    assert resp.status == 200 and (await resp.json())["tags"] == []
    assert (await client.delete(f"/v2/bydigest/manifests/{digest}")).status == 202
    resp = await client.get("/v2/bydigest/tags/list?n=10")
    assert resp.status == 200 and (await resp.json())["tags"] == []


async def test_delete_tag_and_manifest(client):
    digest, body = await push_image(client, "del", "t1", [b"x"])
    await client.put("/v2/del/manifests/t2", data=body)
    resp = await client.delete("/v2/del/manifests/t1")
    assert resp.status == 202
    assert (await client.get("/v2/del/manifests/t1")).status == 404
    assert (await client.get("/v2/del/manifests/t2")).status == 200
    resp = await client.delete(f"/v2/del/manifests/{digest}")
    assert resp.status == 202
    assert (await client.get(f"/v2/del/manifests/{digest}")).status == 404
    assert (await client.get("/v2/del/manifests/t2")).status == 404
    assert (await client.get("/v2/del/tags/list")).status == 200
    again = await client.delete(f"/v2/del/manifests/{digest}")
    assert again.status == 404
    assert await error_codes(again) == ["MANIFEST_UNKNOWN"]


async def test_deletes_can_be_disabled(make_client):
    client = await make_client(delete_manifests=False, delete_tags=False)
    digest, _ = await push_image(client, "keep", "t", [b"x"])
    for ref in ("t", str(digest)):
        resp = await client.delete(f"/v2/keep/manifests/{ref}")
        assert resp.status == 405
        assert await error_codes(resp) == ["UNSUPPORTED"]
    assert (await client.get("/v2/keep/manifests/t")).status == 200


async def test_catalog_paging(client):
    for name in ("zeta", "alpha", "mid/dle", "beta"):
        await push_blob(client, name, b"x")
    resp = await client.get("/v2/_catalog")
    assert (await resp.json())["repositories"] == ["alpha", "beta", "mid/dle", "zeta"]
    resp = await client.get("/v2/_catalog?n=2")
    assert (await resp.json())["repositories"] == ["alpha", "beta"]
    assert resp.headers["Link"] == '</v2/_catalog?n=2&last=beta>; rel="next"'
    resp = await client.get("/v2/_catalog?n=2&last=beta")
    assert (await resp.json())["repositories"] == ["mid/dle", "zeta"]
    assert "Link" not in resp.headers


async def test_a_manifest_is_not_deleted_through_the_blobs_endpoint(client):
    digest, body = await push_image(client, "mb", "t", [b"x"])
    resp = await client.delete(f"/v2/mb/blobs/{digest}")
    assert resp.status == 405
    assert "manifests" in (await resp.json())["errors"][0]["message"]
    assert await (await client.get("/v2/mb/manifests/t")).read() == body


async def test_manifest_etag_and_if_none_match(client):
    digest, _ = await push_image(client, "etag", "t", [b"x"])
    resp = await client.get("/v2/etag/manifests/t")
    assert resp.headers["ETag"] == f'"{digest}"'
    again = await client.get("/v2/etag/manifests/t", headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304
    assert await again.read() == b""
