"""Holder names: each kind is spelled one way (stored in ``links``) and reads back."""

from __future__ import annotations

import pytest

from cas.holders import (
    Holder,
    HolderKind,
    cache_holder,
    image_holder,
    parse_holder,
    repository_holder,
)

# (maker, name, the stored spelling): the spellings are on-disk format and must not change.
CASES = [
    (repository_holder, "library/alpine", "repo:library/alpine", HolderKind.REPOSITORY),
    (image_holder, "registry.example:5000/app:1.0", "image:registry.example:5000/app:1.0",
     HolderKind.IMAGE),
    (image_holder, "docker.io/library/alpine@sha256:" + "a" * 64,
     "image:docker.io/library/alpine@sha256:" + "a" * 64, HolderKind.IMAGE),
    (cache_holder, "0f" * 32, "cache:" + "0f" * 32, HolderKind.CACHE),
    (cache_holder, "base:sha256:" + "b" * 64, "cache:base:sha256:" + "b" * 64, HolderKind.CACHE),
]


@pytest.mark.parametrize(("make", "name", "spelled", "kind"), CASES)
def test_each_kind_is_spelled_once_and_reads_back(make, name, spelled, kind):
    assert make(name) == spelled
    assert parse_holder(spelled) == Holder(kind, name)
    assert str(Holder(kind, name)) == spelled


@pytest.mark.parametrize("text", ["", "repo", "other:x", "Repo:x", "images:x", ":x"])
def test_other_holders_are_none_of_these(text):
    assert parse_holder(text) is None


def test_an_empty_name_keeps_its_kind():
    assert parse_holder("repo:") == Holder(HolderKind.REPOSITORY, "")
