"""``pybuild copy --all-tags SRC DST``: a whole repository moved from CNCF Distribution to
pybuild's registry, as ``skopeo sync`` moves it: every tag, each by the digest it had
(an index whole with ``--all-platforms``, signature tags, tags sharing one digest)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main
from cas import Digest
from registry import oci
from testkit import images
from testkit.registries import (
    RegistryProcess,
    RunningRegistry,
    distribution_argv,
    distribution_config,
    get_manifest,
    http,
    list_tags,
    pybuild_registry,
)

from .helpers import SampleImage, make_index, simple_image


@pytest.fixture(scope="module")
def pybuild(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    with pybuild_registry(tmp_path_factory.mktemp("pybuild")) as running:
        yield running


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("PYBUILD_STORAGE", str(tmp_path / "storage"))
    return CliRunner()


def put_blob(addr: str, repo: str, data: bytes) -> None:
    started = http(addr, "POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started
    location = started.headers["location"].removeprefix(f"http://{addr}")
    sep = "&" if "?" in location else "?"
    resp = http(addr, "PUT", f"{location}{sep}digest={Digest.of(data)}", body=data,
                headers={"Content-Type": "application/octet-stream"})
    assert resp.status == 201, resp


def put_manifest(addr: str, repo: str, ref: str, body: bytes, media_type: str) -> str:
    resp = http(addr, "PUT", f"/v2/{repo}/manifests/{ref}", body=body,
                headers={"Content-Type": media_type})
    assert resp.status == 201, resp
    return resp.headers["docker-content-digest"]


def put_image(addr: str, repo: str, ref: str, image: SampleImage,
              media_type: str = oci.OCI_MANIFEST) -> str:
    for blob in (image.config, *image.layers):
        put_blob(addr, repo, blob)
    return put_manifest(addr, repo, ref, image.manifest, media_type)


def digests(addr: str, repo: str) -> dict[str, str]:
    return {tag: get_manifest(addr, repo, tag).headers["docker-content-digest"]
            for tag in list_tags(addr, repo)}


def test_copy_all_tags_keeps_every_digest(runner: CliRunner, distribution: str,
                                          pybuild: RunningRegistry) -> None:
    repo = f"team/{uuid.uuid4().hex[:8]}/app"
    one, two = simple_image(71, (30_000,)), simple_image(72, (30_000,))
    first = put_image(distribution, repo, "v1", one)
    put_image(distribution, repo, "latest", one)  # two tags, one digest
    put_image(distribution, repo, "v2", two)
    # An index whose bytes are not canonical JSON: its digest is that of these bytes.
    index = json.dumps(json.loads(make_index([(one, "amd64"), (two, "arm64")])), indent=3).encode()
    put_manifest(distribution, repo, "multi", index, oci.OCI_INDEX)
    put_manifest(distribution, repo, f"sha256-{first.split(':')[1]}.sig", two.manifest,
                 oci.OCI_MANIFEST)  # a cosign-style signature tag
    before = digests(distribution, repo)
    assert len(before) == 5

    out = runner.invoke(main, ["copy", "--all-tags", "--all-platforms", "-q",
                               f"docker://{distribution}/{repo}", f"{pybuild.addr}/moved/{repo}"])
    assert out.exit_code == 0, out.output
    assert digests(pybuild.addr, f"moved/{repo}") == before
    assert get_manifest(pybuild.addr, f"moved/{repo}", "multi").body == index

    # Without --all-platforms, as skopeo sync without --all: the index's tag gets one platform.
    out = runner.invoke(main, ["copy", "-a", "--platform", "linux/arm64", "-q",
                               f"{distribution}/{repo}", f"{pybuild.addr}/one/{repo}"])
    assert out.exit_code == 0, out.output
    assert digests(pybuild.addr, f"one/{repo}")["multi"] == before["v2"]


def test_copy_all_tags_refusals_name_the_fix(runner: CliRunner, distribution: str,
                                             tmp_path: Path) -> None:
    tagged = runner.invoke(main, ["copy", "-a", f"{distribution}/x/y:1", f"{distribution}/z"])
    assert tagged.exit_code == 1
    assert "a tag or digest cannot be given with --all-tags/-a" in tagged.output
    layout = runner.invoke(main, ["copy", "-a", f"{distribution}/x/y", f"oci:{tmp_path / 'l'}"])
    assert layout.exit_code == 1
    assert "copy --all-tags copies between registries" in layout.output
    assert not (tmp_path / "l").exists()
    missing = runner.invoke(main, ["copy", "-a", f"{distribution}/none/{uuid.uuid4().hex[:8]}",
                                   f"{distribution}/z"])
    assert missing.exit_code == 1 and "NAME_UNKNOWN" in missing.output


def test_copy_all_repositories_moves_a_namespace(runner: CliRunner, distribution: str,
                                                 pybuild: RunningRegistry) -> None:
    """Every repository the catalog lists under the namespace, nested ones too, lands under
    the destination's namespace with every tag's digest; a repository whose manifests no
    tag names is reported (the API cannot list them: they are copied by digest), after
    the others were copied."""
    ns = f"mig{uuid.uuid4().hex[:8]}"
    one, two = simple_image(81, (20_000,)), simple_image(82, (20_000,))
    for repo in ("app", "team/web", "a/b/c/d"):
        put_image(distribution, f"{ns}/{repo}", "1", one)
        put_image(distribution, f"{ns}/{repo}", "2", two)
    put_image(distribution, f"{ns}-other/app", "1", one)  # beside the namespace: not copied
    put_image(distribution, f"{ns}/untagged", str(two.digest), two)

    out = runner.invoke(main, ["copy", "--all-repositories", "--all-platforms", "-q",
                               f"docker://{distribution}/{ns}", f"{pybuild.addr}/new"])
    assert out.exit_code == 1
    assert f"copy --all-repositories docker://{distribution}/{ns}: 1 of 4 repositories failed " \
           f"({ns}/untagged: " in out.output, out.output
    assert "copy each by its digest" in out.output
    for repo in ("app", "team/web", "a/b/c/d"):
        assert digests(pybuild.addr, f"new/{repo}") == digests(distribution, f"{ns}/{repo}")
    catalog = json.loads(http(pybuild.addr, "GET", "/v2/_catalog").body)["repositories"]
    assert not [r for r in catalog if "other" in r or r.startswith("new/untagged")]

    bad = runner.invoke(main, ["copy", "--all-repositories", "app", f"{pybuild.addr}/new"])
    assert bad.exit_code == 1 and "copy --all-repositories names registries" in bad.output
    both = runner.invoke(main, ["copy", "-a", "--all-repositories", distribution, pybuild.addr])
    assert both.exit_code == 2 and "give it alone" in both.output
    empty = runner.invoke(main, ["copy", "--all-repositories", f"{distribution}/none{ns}",
                                 pybuild.addr])
    assert empty.exit_code == 1 and "lists no repository under none" in empty.output


def test_an_index_of_indexes_is_refused_naming_what_to_copy(runner: CliRunner, distribution: str,
                                                            pybuild: RunningRegistry) -> None:
    """Distribution stores an index that lists an index; pybuild copy cannot write one, and
    says which index to copy by digest instead, before anything moves."""
    repo = f"nest/{uuid.uuid4().hex[:8]}"
    image = simple_image(91, (10_000,))
    put_image(distribution, repo, str(image.digest), image)
    inner = make_index([(image, "amd64")])
    inner_digest = put_manifest(distribution, repo, str(Digest.of(inner)), inner, oci.OCI_INDEX)
    outer = json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_INDEX, "digest": inner_digest, "size": len(inner)}]}).encode()
    put_manifest(distribution, repo, "1", outer, oci.OCI_INDEX)

    whole = runner.invoke(main, ["copy", "--all-platforms", f"{distribution}/{repo}:1",
                                 f"{pybuild.addr}/{repo}:1"])
    assert whole.exit_code == 1
    assert f"its entry {inner_digest} is an index too" in whole.output, whole.output
    assert "copy each index it lists by its digest" in whole.output
    picked = runner.invoke(main, ["copy", f"{distribution}/{repo}:1", f"{pybuild.addr}/{repo}:1"])
    assert picked.exit_code == 1
    assert f"the entry picked, {inner_digest}, is an index" in picked.output, picked.output
    assert http(pybuild.addr, "GET", f"/v2/{repo}/tags/list").status == 404  # nothing moved

    by_digest = runner.invoke(main, ["copy", "--all-platforms", f"{distribution}/{repo}@{inner_digest}",
                                     f"{pybuild.addr}/{repo}@{inner_digest}"])
    assert by_digest.exit_code == 0, by_digest.output
    assert get_manifest(pybuild.addr, repo, inner_digest).body == inner


@pytest.fixture(scope="module")
def schema1_distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """CNCF Distribution that still takes Docker schema 1 manifests, as old ones held them."""
    work = tmp_path_factory.mktemp("schema1")
    argv = distribution_argv(work)

    def with_schema1(addr: str) -> list[str]:
        command = argv(addr)
        (work / "config.yml").write_text(distribution_config(work / "storage", addr)
                                         + "compatibility:\n  schema1:\n    enabled: true\n")
        return command

    with RegistryProcess("distribution", with_schema1, storage=work / "storage",
                         log=work / "registry.log") as running:
        yield running.addr


def test_a_schema1_manifest_is_named_not_called_corrupt(runner: CliRunner, schema1_distribution: str,
                                                        pybuild: RunningRegistry) -> None:
    """A tag an old Distribution holds as Docker schema 1 (signed: its digest covers the
    payload, not the bytes) is said to be schema 1, with how to convert it; not a manifest
    that "does not match its digest", which reads as damage."""
    addr, repo = schema1_distribution, "legacy/app"
    # Distribution converts an image whose config has a history entry for each layer.
    built = images.make_image([images.make_layer(images.tar_files({"etc/app": b"1\n"}))])
    manifest = json.loads(built.manifest)
    manifest["mediaType"] = oci.DOCKER_MANIFEST
    manifest["config"]["mediaType"] = oci.DOCKER_CONFIG
    manifest["layers"][0]["mediaType"] = oci.DOCKER_LAYER
    for blob in built.blobs().values():
        put_blob(addr, repo, blob)
    put_manifest(addr, repo, "v2", json.dumps(manifest).encode(), oci.DOCKER_MANIFEST)
    # Distribution 2.8 converts it to a signed schema 1 manifest for a client that asks
    # for nothing else; stored under a tag, that is what every GET of the tag answers.
    signed = http(addr, "GET", f"/v2/{repo}/manifests/v2").body
    assert b'"schemaVersion": 1' in signed and b"signatures" in signed
    put_manifest(addr, repo, "old", signed, oci.DOCKER_MANIFEST_V1_SIGNED)

    out = runner.invoke(main, ["copy", f"{addr}/{repo}:old", f"{pybuild.addr}/{repo}:old"])
    assert out.exit_code == 1
    assert f"{addr}/{repo}:old is a Docker schema 1 manifest" in out.output, out.output
    assert f"docker pull {addr}/{repo}:old and docker push" in out.output
    assert "does not match its digest" not in out.output
