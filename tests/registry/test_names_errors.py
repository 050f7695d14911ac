"""Names, tags, references and the error table."""

from __future__ import annotations

import json

import pytest

from registry import errors, names
from registry.errors import RegistryError


@pytest.mark.parametrize(
    "name",
    ["a", "library/busybox", "a.b/c_d/e__f", "x-y--z", "0/1/2", "a" * 255],
)
def test_valid_names(name):
    assert names.validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "a/", "/a", "a//b", "a/../b", "..", "a/.", "a_", "_a", "a___b", "a" * 256, "a b", "a%2fb"],
)
def test_invalid_names(name):
    with pytest.raises(RegistryError) as info:
        names.validate_name(name)
    assert info.value.code is errors.NAME_INVALID


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A-b_c.d", "a" * 128])
def test_valid_tags(tag):
    assert names.parse_reference(tag).tag == tag


@pytest.mark.parametrize("tag", ["-x", ".x", "a" * 129, "a/b", "a b", ""])
def test_invalid_tags(tag):
    with pytest.raises(RegistryError) as info:
        names.parse_reference(tag)
    assert info.value.code is errors.TAG_INVALID


@pytest.mark.parametrize("tag", ["-x", ".x", "a" * 129, "a b", ""])
def test_pull_references_treat_invalid_tags_as_absent(tag):
    # GET/HEAD answer 404 for them; a malformed digest stays DIGEST_INVALID.
    assert names.parse_pull_reference(tag) is None
    assert names.parse_pull_reference("latest") == names.Reference(tag="latest")
    with pytest.raises(RegistryError) as info:
        names.parse_pull_reference("sha256:abc")
    assert info.value.code is errors.DIGEST_INVALID


def test_digest_references():
    ref = names.parse_reference("sha512:" + "a" * 128)
    assert ref.digest is not None and ref.digest.algorithm == "sha512"
    for bad in ("sha256:abc", "md5:" + "0" * 32, "sha256:" + "A" * 64):
        with pytest.raises(RegistryError) as info:
            names.parse_reference(bad)
        assert info.value.code is errors.DIGEST_INVALID


@pytest.mark.parametrize(
    "path", ["/v2/a/%2e%2e/b", "/v2/a/../b", "/v2/a/./b", "/v2//a", "/v2/a\\b", "/v2/a%2Fb"]
)
def test_raw_path_tricks(path):
    with pytest.raises(RegistryError) as info:
        names.check_raw_path(path)
    assert info.value.code is errors.NAME_INVALID


def test_raw_path_allows_ordinary_paths():
    for path in ("/v2/", "/v2/a/b/blobs/uploads/", "/v2/a/tags/list?n=1&last=%2e"):
        names.check_raw_path(path)


def test_error_table_mirrors_the_spec():
    spec = {
        "BLOB_UNKNOWN": 404, "BLOB_UPLOAD_INVALID": 400, "BLOB_UPLOAD_UNKNOWN": 404,
        "DIGEST_INVALID": 400, "MANIFEST_BLOB_UNKNOWN": 400, "MANIFEST_INVALID": 400,
        "MANIFEST_UNKNOWN": 404, "NAME_INVALID": 400, "NAME_UNKNOWN": 404, "SIZE_INVALID": 400,
        "UNAUTHORIZED": 401, "DENIED": 403, "UNSUPPORTED": 405, "TOOMANYREQUESTS": 429,
        "RANGE_INVALID": 416,
    }
    for code, status in spec.items():
        assert errors.CODES[code].status == status
        assert code.replace("_", "").isalpha() and code.isupper()


def test_encode_decode_round_trip():
    first = errors.MANIFEST_BLOB_UNKNOWN("missing a", detail={"digest": "sha256:a"})
    second = errors.MANIFEST_BLOB_UNKNOWN("missing b")
    body = errors.encode_errors(*RegistryError.many([first, second]).all())
    doc = json.loads(body)
    assert [e["code"] for e in doc["errors"]] == ["MANIFEST_BLOB_UNKNOWN"] * 2
    decoded = errors.decode_errors(400, body)
    assert [e.code for e in decoded] == [errors.MANIFEST_BLOB_UNKNOWN] * 2
    assert decoded[0].detail == {"digest": "sha256:a"}
    assert decoded[1].message == "missing b"


def test_decode_tolerates_other_bodies():
    [err] = errors.decode_errors(401, b"<html>login</html>")
    assert err.code is errors.UNAUTHORIZED and "login" in err.message
    [err] = errors.decode_errors(404, b'{"errors": [{"code": "VENDOR_THING", "message": "x"}]}')
    assert err.code.code == "VENDOR_THING" and err.status == 404
    [err] = errors.decode_errors(500, b'{"errors": []}')
    assert err.code is errors.UNKNOWN


@pytest.mark.parametrize("module", [errors, names])
def test_exports(module):
    for name in module.__all__:
        assert hasattr(module, name), name
