"""skopeo against the registry under test: OCI layout -> registry -> OCI layout, byte-exact."""

from __future__ import annotations

import json
from pathlib import Path

from testkit.clients import run, skopeo
from testkit.images import OCI_INDEX, OCI_MANIFEST, Image, make_image, read_oci_layout, write_oci_index_layout
from testkit.registries import RunningRegistry, get_manifest, http, list_tags

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def push_layout(layout: Path, registry: RunningRegistry, repository: str, tag: str) -> None:
    run(skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:latest",
               f"docker://{registry.ref(repository, tag)}"))


def test_copy_round_trip_keeps_every_digest(
    busybox: Image, busybox_layout: Path, registry_under_test: RunningRegistry, tmp_path: Path
) -> None:
    push_layout(busybox_layout, registry_under_test, "e2e/busybox", "v1")
    out = tmp_path / "pulled"
    run(skopeo("copy", "--src-tls-verify=false",
               f"docker://{registry_under_test.ref('e2e/busybox', 'v1')}", f"oci:{out}:v1"))

    pulled = read_oci_layout(out, "v1")
    assert pulled.manifest_digest == busybox.manifest_digest
    assert pulled.manifest == busybox.manifest
    assert pulled.config == busybox.config
    assert pulled.layer_digests == tuple(layer.digest for layer in busybox.layers)


def test_registry_serves_the_pushed_manifest(
    busybox: Image, busybox_layout: Path, registry_under_test: RunningRegistry
) -> None:
    push_layout(busybox_layout, registry_under_test, "e2e/busybox", "v1")
    resp = get_manifest(registry_under_test.addr, "e2e/busybox", "v1")
    assert resp.status == 200
    assert resp.headers["docker-content-digest"] == busybox.manifest_digest
    assert resp.headers["content-type"] == "application/vnd.oci.image.manifest.v1+json"
    assert resp.body == busybox.manifest
    # The same manifest by digest, and through skopeo's own reading of it.
    by_digest = get_manifest(registry_under_test.addr, "e2e/busybox", busybox.manifest_digest)
    assert by_digest.body == busybox.manifest
    raw = run(skopeo("inspect", "--raw", "--tls-verify=false",
                     f"docker://{registry_under_test.ref('e2e/busybox', 'v1')}")).stdout
    assert raw.encode() == busybox.manifest


def test_tags_and_delete(busybox_layout: Path, registry_under_test: RunningRegistry) -> None:
    for tag in ("a", "b"):
        push_layout(busybox_layout, registry_under_test, "e2e/tags", tag)
    assert sorted(list_tags(registry_under_test.addr, "e2e/tags")) == ["a", "b"]
    listed = json.loads(run(skopeo("list-tags", "--tls-verify=false",
                                   f"docker://{registry_under_test.addr}/e2e/tags")).stdout)
    assert sorted(listed["Tags"]) == ["a", "b"]

    # Deleting by digest removes the manifest, and with it every tag that pointed at it.
    run(skopeo("delete", "--tls-verify=false",
               f"docker://{registry_under_test.ref('e2e/tags', 'a')}"))
    assert get_manifest(registry_under_test.addr, "e2e/tags", "b").status == 404
    assert get_manifest(registry_under_test.addr, "e2e/tags", "a").status == 404


def test_a_docker_manifest_list_goes_to_clients_that_do_not_list_its_type(
    busybox: Image, tmp_path: Path, registry_under_test: RunningRegistry
) -> None:
    # skopeo pushes a two-platform Docker manifest list; clients that list only schema 2
    # (older than lists) or only OCI types get what CNCF Distribution gives them.
    images = {"linux/amd64": busybox,
              "linux/arm64": make_image(busybox.layers, architecture="arm64")}
    layout = write_oci_index_layout(images, tmp_path / "index")
    run(skopeo("copy", "--all", "--format", "v2s2", "--dest-tls-verify=false",
               f"oci:{layout}:latest", f"docker://{registry_under_test.ref('e2e/list', 'v1')}"))
    listed = get_manifest(registry_under_test.addr, "e2e/list", "v1")
    assert listed.headers["content-type"] == DOCKER_MANIFEST_LIST
    amd64 = next(m["digest"] for m in json.loads(listed.body)["manifests"]
                 if m["platform"]["architecture"] == "amd64")

    def ask(reference: str, accept: str) -> tuple[int, str | None]:
        resp = http(registry_under_test.addr, "GET", f"/v2/e2e/list/manifests/{reference}",
                    headers={"Accept": accept})
        return resp.status, resp.headers.get("docker-content-digest")

    digest = listed.headers["docker-content-digest"]
    assert ask("v1", DOCKER_MANIFEST) == (200, amd64)
    assert ask(digest, DOCKER_MANIFEST) == (200, digest)
    assert ask(digest, OCI_INDEX) == (200, digest)
    assert ask(amd64, OCI_MANIFEST) == (200, amd64)
