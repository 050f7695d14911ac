"""``.dockerignore`` matching with moby's patternmatcher rules (table-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.build_cmd import build
from builder.context import ContextError, SourceTree
from builder.ignore import IgnoreMatcher, Pattern, read_ignore_file

CASES = [
    # patterns, path, excluded
    (["*.md"], "README.md", True),
    (["*.md"], "docs/a.md", False),  # anchored at the root, unlike gitignore
    (["**/*.md"], "docs/a.md", True),
    (["**/*.md"], "a.md", True),  # ** matches zero directories too
    (["docs"], "docs/deep/file", True),  # a parent match excludes the children
    (["/docs/"], "docs/x", True),  # cleaned: leading / and trailing / dropped
    (["./a//b"], "a/b", True),
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),  # ? never matches /
    (["*"], "x/y", True),
    (["*", "!keep"], "keep", False),
    (["*", "!keep"], "other", True),
    (["!keep", "*"], "keep", True),  # the last matching pattern decides
    (["*.log", "!important.log"], "important.log", False),
    (["# comment", "", "tmp"], "tmp", True),
    (["[ab].txt"], "b.txt", True),
    # moby's escapes and classes, not fnmatch's
    ([r"weird\[1\].txt"], "weird[1].txt", True),
    ([r"weird\[1\].txt"], "weird1.txt", False),
    ([r"a\*b"], "a*b", True),
    ([r"a\*b"], "axb", False),
    (["[^a]x"], "bx", True),
    (["[^a]x"], "ax", False),
    (["[!a]x"], "!x", True),  # '!' is no negation in a class
    (["[!a]x"], "bx", False),
    (["file.(1)+{x}$"], "file.(1)+{x}$", True),
    (["[a"], "[a", False),  # an unclosed class matches nothing
]


@pytest.mark.parametrize("patterns, path, excluded", CASES)
def test_patterns(patterns: list[str], path: str, excluded: bool) -> None:
    assert IgnoreMatcher.from_lines(patterns).excluded(path) is excluded


def test_exception_inside_an_excluded_directory(tmp_path: Path) -> None:
    (tmp_path / "vendor/keep").mkdir(parents=True)
    (tmp_path / "vendor/drop.txt").write_text("x")
    (tmp_path / "vendor/keep/k.txt").write_text("k")
    tree = SourceTree(tmp_path, IgnoreMatcher.from_lines(["vendor", "!vendor/keep"]))
    [root] = tree.resolve(".")
    got = sorted(rel for rel, _, _ in tree.walk(root))
    assert got == ["vendor/keep", "vendor/keep/k.txt"]
    with pytest.raises(ContextError, match="excluded by .dockerignore"):
        tree.resolve("vendor/drop.txt")


def test_dockerfile_specific_ignore_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("a\n")
    (tmp_path / "sub").mkdir()
    df = tmp_path / "sub/app.Dockerfile"
    df.write_text("FROM scratch\n")
    (tmp_path / "sub/app.Dockerfile.dockerignore").write_text("b\n")
    m = read_ignore_file(tmp_path, df)
    assert m.excluded("b") and not m.excluded("a")
    assert read_ignore_file(tmp_path, tmp_path / "Dockerfile").excluded("a")


def test_a_byte_order_mark_and_crlf_are_not_part_of_the_patterns(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_bytes(b"\xef\xbb\xbfbuild/\r\n!build/keep\r\n*.key\r\n")
    m = read_ignore_file(tmp_path, None)
    assert m.excluded("build/out.o") and m.excluded("x.key") and not m.excluded("build/keep")


@pytest.mark.parametrize("pattern", ["secrets[", "*.pem\\", "[]"])
def test_a_pattern_with_a_syntax_error_fails_the_build_naming_its_line(
        tmp_path: Path, pattern: str) -> None:
    # As the docker CLI and BuildKit ("invalid excludepatterns: [secrets[]: syntax error in
    # pattern"): a broken pattern is no pattern that quietly excludes nothing.
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY . /\n")
    (tmp_path / ".dockerignore").write_text(f"# keys\n{pattern}\n")
    done = CliRunner().invoke(build, ["--progress", "quiet", "--storage",
                                      str(tmp_path / "s"), str(tmp_path)])
    assert done.exit_code == 1, done.output
    assert done.output.strip().splitlines()[-1] == (
        f"ERROR: .dockerignore:2: syntax error in pattern {pattern!r}: close each '[' with "
        "']' and end no pattern with a lone '\\' (escape a literal one as '\\[' or '\\\\')")


def test_a_thousand_patterns_over_many_paths_cost_one_match_per_run_of_patterns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A generated .dockerignore of 1,000 patterns and a context of 100,000 files (as in a
    # monorepo): each path is asked once per walk, so a path must cost one match per run
    # of patterns (all excluding, or all re-including), not one per pattern and parent
    # (that took over 6 ms a path: ten minutes for such a context).
    calls = 0
    one_by_one = Pattern.matches

    def counted(self: Pattern, parts: tuple[str, ...]) -> bool:
        nonlocal calls
        calls += 1
        return one_by_one(self, parts)

    monkeypatch.setattr(Pattern, "matches", counted)
    patterns = [f"**/generated{i}*" for i in range(1000)] + ["d1", "!d1/f1.txt", "**/f9*.txt"]
    m = IgnoreMatcher.from_lines(patterns)
    paths = [f"d{d}/f{f}.txt" for d in range(20) for f in range(1000)]
    excluded = {p for p in paths if m.excluded(p)}
    assert calls == 0  # no pattern was tried on its own
    assert "d1/f1.txt" not in excluded and "d1/f2.txt" in excluded
    assert "d3/f95.txt" in excluded and "d1/f9.txt" in excluded and "d3/f1.txt" not in excluded
    assert len(excluded) == 999 + 19 * 111
