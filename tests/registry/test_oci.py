"""OCI objects: round trips keep unknown fields; invalid documents name the bad field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import oci

TESTFILES = Path(__file__).parent / "testfiles"


def _load(name: str) -> dict:
    return json.loads((TESTFILES / "oci" / name).read_text())


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("docker-schema2.json", oci.Manifest),
        ("oci-artifact.json", oci.Manifest),
        ("oci-index.json", oci.Index),
        ("image-config.json", oci.ImageConfig),
    ],
)
def test_round_trip_preserves_every_field(name, cls):
    doc = _load(name)
    obj = cls.from_json(doc)
    assert obj.to_json() == doc
    assert cls.from_json(json.loads(json.dumps(obj.to_json()))) == obj


def test_typed_access():
    m = oci.Manifest.from_json(_load("oci-artifact.json"))
    assert m.artifact_type == "application/vnd.example.sbom.v1"
    assert m.config.data == b"{}"
    assert m.subject is not None and m.subject.size == 0
    assert m.layers[0].extra == {"x-vendor-field": {"kept": True}}
    assert m.effective_artifact_type() == "application/vnd.example.sbom.v1"
    d = oci.Manifest.from_json(_load("docker-schema2.json"))
    assert d.media_type == oci.DOCKER_MANIFEST
    assert [layer.nondistributable for layer in d.layers] == [False, True]
    idx = oci.Index.from_json(_load("oci-index.json"))
    assert idx.manifests[1].platform == oci.Platform("arm64", "linux", os_features=("x",), variant="v8")
    cfg = oci.ImageConfig.from_json(_load("image-config.json"))
    assert cfg.config is not None and cfg.config.entrypoint == ("/bin/my-app-binary",)
    assert cfg.history is not None and cfg.history[1].empty_layer is True
    assert str(cfg.rootfs.diff_ids[0]).startswith("sha256:c6f988")


NEGATIVE = sorted((TESTFILES / "manifests-negative").glob("*.json"))


@pytest.mark.parametrize("path", NEGATIVE, ids=[p.stem for p in NEGATIVE])
def test_invalid_manifests_are_refused(path):
    with pytest.raises(oci.InvalidObject) as info:
        oci.parse_manifest(path.read_bytes(), None)
    assert str(info.value)


def test_error_names_the_field():
    doc = _load("docker-schema2.json")
    doc["layers"][1]["size"] = -1
    with pytest.raises(oci.InvalidObject, match=r"manifest\.layers\[1\]\.size"):
        oci.Manifest.from_json(doc)


def test_media_type_resolution():
    raw = json.dumps(_load("oci-index.json")).encode()
    assert oci.parse_manifest(raw, "application/vnd.oci.image.index.v1+json; charset=x")[0] == oci.OCI_INDEX
    with pytest.raises(oci.InvalidObject, match="must agree"):
        oci.parse_manifest(raw, oci.OCI_MANIFEST)
    doc = _load("oci-index.json")
    del doc["mediaType"]
    assert oci.parse_manifest(json.dumps(doc).encode(), None)[0] == oci.OCI_INDEX
    doc = _load("docker-schema2.json")
    del doc["mediaType"]
    with pytest.raises(oci.InvalidObject, match="required"):
        oci.parse_manifest(json.dumps(doc).encode(), oci.DOCKER_MANIFEST)


@pytest.mark.parametrize("text,expected", [
    ("linux/amd64", "linux/amd64"), ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm", "linux/arm/v7"), ("arm64", "linux/arm64"), ("linux/x86_64", "linux/amd64"),
    ("Linux/AArch64", "linux/arm64"), ("linux/armel", "linux/arm/v6"),
    ("linux/arm/v5", "linux/arm/v5"), ("linux/i686", "linux/386"),
])
def test_platform_parse_normalises(text, expected):
    assert str(oci.Platform.parse(text)) == expected


@pytest.mark.parametrize("text", ["", "/amd64", "linux/", "linux//v7", "linux/arm/v7/x"])
def test_platform_parse_refuses(text):
    with pytest.raises(ValueError, match="expected os/arch"):
        oci.Platform.parse(text)


def test_platform_parse_gives_the_index_entry_type():
    host = oci.Platform.host()
    assert oci.Platform.parse("windows") == oci.Platform(host.architecture, "windows", variant=host.variant)
    assert oci.Platform.parse("linux/arm64") == oci.Platform("arm64", "linux")
    assert oci.Platform.parse(str(host)) == host
    entry = oci.Platform.from_json({"architecture": "arm", "os": "linux", "variant": "v7"})
    assert entry == oci.Platform.parse("linux/arm/v7") and str(entry) == "linux/arm/v7"


def test_exports():
    for name in oci.__all__:
        assert hasattr(oci, name), name
