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
"""

from __future__ import annotations

from pathlib import Path

import dockerfile
import pytest

from builder.errors import DockerfileError
from builder.syntax import parse

from .test_testfiles import NEGATIVE, POSITIVE, read_dockerfile

HERE = Path(__file__).parent

# negative cases that BuildKit's parser itself (not its later stages) must reject too
SYNTAX_NEGATIVE = [
    "duplicate-directive", "invalid-escape", "empty-file", "only-comments", "env-no-value",
    "env-missing-equals", "label-no-value", "json-not-strings", "unterminated-heredoc",
]


@pytest.mark.parametrize("case", POSITIVE)
def test_agrees_with_buildkit(case: str) -> None:
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


@pytest.mark.parametrize("case", SYNTAX_NEGATIVE)
def test_rejected_by_both(case: str) -> None:
    assert case in NEGATIVE
    text = read_dockerfile(HERE / "testfiles-negative" / case / "Dockerfile")
    with pytest.raises(dockerfile.GoParseError):
        dockerfile.parse_string(text)
    with pytest.raises(DockerfileError):
        parse(text)
