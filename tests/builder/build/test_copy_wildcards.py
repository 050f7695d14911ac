"""COPY's wildcards match as BuildKit's (Go's ``filepath.Match``), not as fnmatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.context import ContextError, SourceTree

NAMES = ("a1", "b1", "!1", "^1", "[1", "[1]", "star*x", "starYx", ".hidden1")


@pytest.fixture
def tree(tmp_path: Path) -> SourceTree:
    (tmp_path / "d").mkdir()
    for name in NAMES:
        (tmp_path / "d" / name).write_text(name)
    return SourceTree(tmp_path)


def _matched(tree: SourceTree, src: str) -> list[str]:
    return [s.rel for s in tree.resolve(src, allow_empty_wildcard=True)]


@pytest.mark.parametrize(("src", "expected"), [
    # '^' negates a class; '!' is a plain character in it (fnmatch has them the other way)
    ("d/[^a]1", ["d/!1", "d/[1", "d/^1", "d/b1"]),
    ("d/[!a]1", ["d/!1", "d/a1"]),
    ("d/[[]1]", ["d/[1]"]),
    ("d/star[*]x", ["d/star*x"]),
    ("d/*1", ["d/!1", "d/.hidden1", "d/[1", "d/^1", "d/a1", "d/b1"]),
])
def test_classes_match_as_buildkit_matches_them(tree: SourceTree, src: str,
                                                expected: list[str]) -> None:
    assert _matched(tree, src) == expected


@pytest.mark.parametrize("src", ["d/[1", "d/[]1", "d/*[a"])
def test_a_malformed_pattern_is_an_error_not_a_literal_name(tree: SourceTree, src: str) -> None:
    # BuildKit: "syntax error in pattern"; fnmatch took 'd/[1' as the file '[1'
    with pytest.raises(ContextError, match=r"syntax error in pattern .*'\[\[\]'"):
        tree.resolve(src, allow_empty_wildcard=True)
