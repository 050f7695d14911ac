"""Image reference parsing with Docker's defaults."""

from __future__ import annotations

import pytest

from registry.client.refs import InvalidReference, is_loopback, parse_image_ref

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "host", "name", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.19", "docker.io", "library/alpine", "3.19", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/user/app:1", "docker.io", "user/app", "1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/a/b/c:t", "localhost:5000", "a/b/c", "t", None),
        ("quay.io/org/app@" + D, "quay.io", "org/app", None, D),
        ("reg.example:443/app:v1@" + D, "reg.example:443", "app", "v1", D),
        ("[::1]:5000/app", "[::1]:5000", "app", "latest", None),
    ],
)
def test_parse(text: str, host: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse_image_ref(text)
    assert (ref.host, ref.name, ref.tag) == (host, name, tag)
    assert (str(ref.digest) if ref.digest else None) == digest
    assert ref.reference == (digest or tag)
    assert parse_image_ref(str(ref)) == ref


@pytest.mark.parametrize("text", ["", " a", "x/Upper", "a:b:c", "a@sha256:12", "a:-x", "a//b"])
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidReference, match="invalid image reference"):
        parse_image_ref(text)


def test_hub_api_host_and_loopback() -> None:
    assert parse_image_ref("alpine").api_host == "registry-1.docker.io"
    assert parse_image_ref("localhost:5000/a").api_host == "localhost:5000"
    assert is_loopback("127.0.0.1:5000") and is_loopback("localhost") and is_loopback("[::1]:1")
    assert not is_loopback("registry.example") and not is_loopback("10.0.0.1:5000")
