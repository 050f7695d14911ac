"""Our syntax stage against BuildKit's own parser (the ``dockerfile`` package).

Every positive testfile must give the same instruction names, flags, arguments, JSON-ness,
line ranges and heredocs in both. Where the representations differ on purpose:

- ONBUILD: the oracle reports the trigger's keyword as ``sub_cmd`` and its arguments as
  ``value``, but neither the trigger's flags nor its heredocs (its line range shows it
  read them); we keep both on the child node.
- ``original`` of an instruction with heredocs: the oracle appends the heredoc bodies;
  ours is the instruction line only (bodies are in ``heredocs``). Compared without them.
- Unknown instruction names: BuildKit's parser accepts them and its instruction stage
  rejects them; ours rejects them in the syntax stage (with a suggestion).

The oracle wraps an older BuildKit than the one we follow; ORACLE_DIFFERS lists the
cases where BuildKit changed since, with what changed. Those cases must still differ (so
that an upgraded oracle makes this test point at the list).
"""

from __future__ import annotations

from pathlib import Path

import dockerfile
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builder.dockerfile.errors import DockerfileError
from builder.dockerfile.syntax import parse

from .test_testfiles import NEGATIVE, POSITIVE, read_dockerfile

HERE = Path(__file__).parent

# negative cases that BuildKit's parser itself (not its later stages) must reject too
SYNTAX_NEGATIVE = [
    "duplicate-directive", "invalid-escape", "empty-file", "only-comments", "env-no-value",
    "env-missing-equals", "label-no-value", "json-not-strings", "unterminated-heredoc",
]


ORACLE_DIFFERS = {
    # BuildKit now parses JSON with json.Unmarshal (text after the array makes it shell
    # form); the older one decoded the first value and ignored the rest.
    "json-trailing-text": "JSON array followed by text",
    # BuildKit now honours the escape directive inside flags; the older one only knew \\.
    "flags-escape-backtick": "escape character inside a flag",
    # The older BuildKit copied flag bytes one by one, garbling non-ASCII characters.
    "flags-non-ascii": "non-ASCII characters in a flag",
}


def _agree(case: str) -> None:
    text = read_dockerfile(HERE / "testfiles" / case / "Dockerfile")
    ours = parse(text).nodes
    theirs = dockerfile.parse_string(text)
    assert len(ours) == len(theirs)
    for node, cmd in zip(ours, theirs, strict=True):
        where = f"{case}:{node.start_line}"
        assert cmd.cmd.upper() == node.keyword, where
        assert (cmd.start_line, cmd.end_line) == (node.start_line, node.end_line), where
        assert cmd.flags == node.flags, where
        target = node.child if node.child is not None else node
        assert cmd.sub_cmd == (None if node.child is None else target.written), where
        assert cmd.value == target.args, where
        assert cmd.json == target.json, where
        if node.child is None:
            assert [(h.name, h.content, h.file_descriptor) for h in cmd.heredocs] == [
                (h.name, h.content, h.fd) for h in node.heredocs], where
        if not node.heredocs:
            assert cmd.original == node.original, where


@pytest.mark.parametrize("case", [c for c in POSITIVE if c not in ORACLE_DIFFERS])
def test_agrees_with_buildkit(case: str) -> None:
    _agree(case)


@pytest.mark.parametrize("case", sorted(ORACLE_DIFFERS))
def test_known_differences_from_the_older_oracle(case: str) -> None:
    assert case in POSITIVE
    with pytest.raises(AssertionError):
        _agree(case)


@pytest.mark.parametrize("case", SYNTAX_NEGATIVE)
def test_rejected_by_both(case: str) -> None:
    assert case in NEGATIVE
    text = read_dockerfile(HERE / "testfiles-negative" / case / "Dockerfile")
    with pytest.raises(dockerfile.GoParseError):
        dockerfile.parse_string(text)
    with pytest.raises(DockerfileError):
        parse(text)


# Pieces of Dockerfile text that random files are assembled from (leaving out the
# constructs listed in ORACLE_DIFFERS).
ATOMS = [
    "FROM", "RUN", "COPY", "ENV", "LABEL", "ARG", "CMD", "ONBUILD", "HEALTHCHECK", "ADD",
    "VOLUME", "EXPOSE", "USER", " ", "  ", "\t", "\\", "\\\n", "\n", "#", '"', "'", "a",
    "b=c", "=", "--from=x", "--mount=type=cache,target=/x", "--", "]", ",", "<<EOF",
    "<<-EOF", '<<"EOF"', "\nEOF\n", "\n\tEOF\n", "$x", "${x}", "\r\n", "\n\n",
    # blank to Go and Python (\v \f), or to Python's isspace only (\x1c-\x1f); multi-byte
    # blanks (\xa0) are left out: BuildKit's HEALTHCHECK splitter reads them byte by byte
    "\x0b", "\x0c", "\x1c", "\x1f",
]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(ATOMS), min_size=1, max_size=14))
def test_random_files_agree_with_buildkit(atoms: list[str]) -> None:
    text = "FROM a\n" + "".join(atoms)
    try:
        theirs = dockerfile.parse_string(text)
    except dockerfile.GoParseError:
        with pytest.raises(DockerfileError):
            parse(text)
        return
    try:
        ours = parse(text).nodes
    except DockerfileError as exc:
        assert "unknown instruction" in str(exc)  # BuildKit rejects these one stage later
        return
    assert len(ours) == len(theirs)
    for node, cmd in zip(ours, theirs, strict=True):
        target = node.child if node.child is not None else node
        assert (cmd.cmd.upper(), cmd.flags, cmd.value, cmd.start_line, cmd.end_line,
                cmd.json) == (node.keyword, node.flags, target.args, node.start_line,
                              node.end_line, target.json)
