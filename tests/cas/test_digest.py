import hashlib

import pytest

from cas import Digest, InvalidDigest, UnsupportedDigestAlgorithm, new_hasher


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
def test_of_and_parse_round_trip(algorithm: str) -> None:
    d = Digest.of(b"hello", algorithm)
    assert Digest.parse(str(d)) == d
    assert str(d).startswith(algorithm + ":")


def test_sha256_matches_hashlib() -> None:
    assert Digest.of(b"abc").encoded == hashlib.sha256(b"abc").hexdigest()


def test_streaming_equals_one_shot() -> None:
    h = new_hasher("blake3")
    for part in (b"ab", b"", b"c" * 100000):
        h.update(part)
    assert h.hexdigest() == Digest.of(b"ab" + b"c" * 100000, "blake3").encoded


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256",
        "sha256:",
        "sha256:abc",
        "sha256:" + "A" * 64,
        "sha256:" + "g" * 64,
        ":" + "a" * 64,
        "sha512:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
    ],
)
def test_malformed_digests_are_refused_with_the_reason(text: str) -> None:
    with pytest.raises(InvalidDigest, match="invalid digest"):
        Digest.parse(text)


def test_unknown_algorithm_names_the_supported_ones() -> None:
    with pytest.raises(UnsupportedDigestAlgorithm, match="sha256, sha512 or blake3"):
        Digest.parse("md5:" + "a" * 32)
