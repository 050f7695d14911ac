"""Variable expansion against data tables that follow BuildKit's shell lexer tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.dockerfile.errors import DockerfileError
from builder.dockerfile.instructions import Env, Label
from builder.dockerfile.shell_lex import MAX_NESTING, Lexer, ShellLexError
from builder.dockerfile.stages import plan_build
from builder.dockerfile.syntax import parse

DATA = Path(__file__).parent / "testfiles-shell"


def _expand_cases() -> list[tuple[str, str, dict[str, str], str, int]]:
    cases = []
    env: dict[str, str] = {}
    escape = "\\"
    lines = (DATA / "expand.tsv").read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        if line.startswith("@env "):
            env = json.loads(line[5:])
            continue
        if line.startswith("@escape "):
            escape = line[8:]
            continue
        word, expected = line.split("\t")
        cases.append((word, escape, dict(env), expected, lineno))
    return cases


def _words_cases() -> list[tuple[str, dict[str, str], str, int]]:
    cases = []
    env: dict[str, str] = {}
    lines = (DATA / "words.tsv").read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line or line.startswith("#"):
            continue
        if line.startswith("@set "):
            name, _, value = line[5:].partition("=")
            env[name] = value
            continue
        word, expected = line.split("\t")
        cases.append((word, dict(env), expected, lineno))
    return cases


@pytest.mark.parametrize(
    "word,escape,env,expected,lineno", _expand_cases())
def test_expand_table(word: str, escape: str, env: dict[str, str], expected: str,
                      lineno: int) -> None:
    lex = Lexer(escape)
    if expected.startswith("!error"):
        with pytest.raises(ShellLexError) as info:
            lex.process_word(word, env)
        wanted = expected[len("!error:"):] if expected.startswith("!error:") else ""
        assert wanted in str(info.value), f"expand.tsv:{lineno}"
    else:
        assert lex.process_word(word, env) == expected, f"expand.tsv:{lineno}"


@pytest.mark.parametrize("word,env,expected,lineno", _words_cases())
def test_words_table(word: str, env: dict[str, str], expected: str, lineno: int) -> None:
    lex = Lexer()
    if expected == "!error":
        with pytest.raises(ShellLexError):
            lex.process_words(word, env)
    else:
        assert lex.process_words(word, env) == json.loads(expected), f"words.tsv:{lineno}"


def test_matches_reports_found_and_missing_names() -> None:
    res = Lexer().expand("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", {"FOO": "xxx", "BAR": ""})
    assert res.result == "xxx  ccc"
    assert res.matched == {"FOO", "BAR"}
    assert res.unmatched == {"BAZ"}


def test_skip_unset_env_keeps_references() -> None:
    lex = Lexer(skip_unset_env=True)
    assert lex.process_word("$A ${B} ${C:-x} ${D/a/b} $E", {"E": "e"}) == (
        "$A ${B} ${C:-x} ${D/a/b} e"
    )


def test_error_names_the_word() -> None:
    with pytest.raises(ShellLexError, match=r'failed to process "he\$\{\}"'):
        Lexer().process_word("he${}", {})


def _nested(depth: int, inner: str = "x") -> str:
    return "${A:-" * depth + inner + "}" * depth


@pytest.mark.parametrize("depth", [400, 1000, MAX_NESTING])
def test_deep_nesting_expands(depth: int) -> None:
    # Python's default recursion limit (1000 frames) allowed ~330 levels before.
    assert Lexer().process_word(_nested(depth), {}) == "x"
    assert Lexer().process_word('"' + _nested(depth, '"y"') + '"', {"A": ""}) == "y"


def test_nesting_past_the_limit_is_one_clear_error() -> None:
    with pytest.raises(ShellLexError) as info:
        Lexer().process_word(_nested(MAX_NESTING + 1), {})
    message = str(info.value)
    assert f"nested more than {MAX_NESTING} deep" in message
    assert len(message) < 500  # the word is named, not copied whole
    assert "\n" not in message


def test_nesting_past_the_limit_names_the_dockerfile_line() -> None:
    text = "FROM scratch\nLABEL a=" + _nested(MAX_NESTING + 1) + "\n"
    with pytest.raises(DockerfileError) as info:
        plan_build(text)
    assert str(info.value).endswith(" at Dockerfile:2:1")
    assert f"nested more than {MAX_NESTING} deep" in str(info.value)


# Go's unicode.IsSpace, by which BuildKit splits words: NBSP and the Unicode spaces split,
# the ASCII separators \x1c-\x1f (whitespace to Python) do not.
@pytest.mark.parametrize("sep,split", [(" ", True), ("\t", True), ("\xa0", True),
                                       ("\u2003", True), ("\x85", True), ("\x1c", False),
                                       ("\x1f", False), ("\u200b", False)])
def test_words_split_at_go_whitespace_only(sep: str, split: bool) -> None:
    lexer = Lexer("\\")
    want = ["80", "81"] if split else [f"80{sep}81"]
    assert lexer.process_words(f"80{sep}81", {}) == want          # nothing to expand
    assert lexer.process_words(f"${{P}}{sep}81", {"P": "80"}) == want
    assert lexer.process_words("$P", {"P": f"80{sep}81"}) == want  # a value's blanks
    text = f"FROM a\nENV A=1{sep}B=2\nLABEL x=a{sep}y=b\n"
    env, label = plan_build(parse(text), {}).stages[0].instructions[1:]
    assert isinstance(env, Env) and isinstance(label, Label)
    assert [(kv.key, kv.value) for kv in env.env] == (
        [("A", "1"), ("B", "2")] if split else [("A", f"1{sep}B=2")])
    assert [(kv.key, kv.value) for kv in label.labels] == (
        [("x", "a"), ("y", "b")] if split else [("x", f"a{sep}y=b")])
