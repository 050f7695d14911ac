"""The URL table: every endpoint, parsed from raw paths (table-driven)."""

from __future__ import annotations

import pytest

from registry.errors import RegistryError
from registry.server.routes import match

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("method", "path", "route", "params"),
    [
        ("GET", "/v2/", "base", {}),
        ("GET", "/v2", "base", {}),
        ("GET", "/v2/_catalog", "catalog", {}),
        ("GET", "/v2/_oci/ext/discover", "discover", {}),
        ("POST", "/v2/a/b/blobs/uploads/", "upload-start", {"name": "a/b"}),
        ("POST", "/v2/a/blobs/uploads", "upload-start", {"name": "a"}),
        ("PATCH", "/v2/a/blobs/uploads/u-1", "upload", {"name": "a", "upload_id": "u-1"}),
        ("GET", "/v2/a/blobs/uploads/u-1", "upload", {"name": "a", "upload_id": "u-1"}),
        ("HEAD", f"/v2/x/y/z/blobs/{D}", "blob", {"name": "x/y/z", "digest": D}),
        ("PUT", "/v2/a/manifests/latest", "manifest", {"name": "a", "reference": "latest"}),
        ("DELETE", f"/v2/a/manifests/{D}", "manifest", {"name": "a", "reference": D}),
        ("GET", "/v2/a/tags/list", "tags", {"name": "a"}),
        ("GET", f"/v2/a/referrers/{D}", "referrers", {"name": "a", "digest": D}),
        ("GET", "/v2/a/_oci/ext/discover", "discover", {"name": "a"}),
        ("GET", "/v2/a/_pybuild/blob/recipe", "recipe", {"name": "a"}),
        # Names may contain resource words as components.
        ("GET", "/v2/blobs/manifests/tags", "manifest", {"name": "blobs", "reference": "tags"}),
        ("GET", f"/v2/tags/blobs/{D}", "blob", {"name": "tags", "digest": D}),
    ],
)
def test_routes(method, path, route, params):
    found, handler, got = match(method, path)
    assert found.name == route
    assert got == params
    assert callable(handler)


@pytest.mark.parametrize(
    ("method", "path", "code", "status"),
    [
        ("GET", "/v2/a/unknown", "UNSUPPORTED", 404),
        ("GET", "/v2/a/blobs/", "UNSUPPORTED", 404),
        ("PUT", "/v2/a/tags/list", "UNSUPPORTED", 405),
        ("POST", "/v2/_catalog", "UNSUPPORTED", 405),
        ("GET", "/v2/A/tags/list", "NAME_INVALID", 400),
        ("GET", "/v2/a//b/tags/list", "NAME_INVALID", 400),
        ("GET", "/v2/a/blobs/uploads/bad%id", "BLOB_UPLOAD_UNKNOWN", 404),
    ],
)
def test_route_errors(method, path, code, status):
    with pytest.raises(RegistryError) as info:
        match(method, path)
    assert info.value.code.code == code
    assert info.value.status == status
