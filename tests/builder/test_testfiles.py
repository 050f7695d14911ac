"""Data-driven parser tests: testfiles/<case>/ must parse to expected.json,
testfiles-negative/<case>/ must fail with the message in error.txt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.dockerfile.errors import DockerfileError
from builder.dockerfile.instruction_parsers import parse_dockerfile
from builder.dockerfile.parse_cmd import tree_to_json
from builder.dockerfile.syntax import parse

HERE = Path(__file__).parent
POSITIVE = sorted(p.name for p in (HERE / "testfiles").iterdir() if p.is_dir())
NEGATIVE = sorted(p.name for p in (HERE / "testfiles-negative").iterdir() if p.is_dir())


def read_dockerfile(path: Path) -> str:
    # bytes -> str without newline translation: CRLF cases must reach the parser as written
    return path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("case", POSITIVE)
def test_positive(case: str) -> None:
    folder = HERE / "testfiles" / case
    doc = tree_to_json(parse(read_dockerfile(folder / "Dockerfile")))
    expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
    assert doc == expected


@pytest.mark.parametrize("case", NEGATIVE)
def test_negative(case: str) -> None:
    folder = HERE / "testfiles-negative" / case
    wanted = (folder / "error.txt").read_text(encoding="utf-8").rstrip("\n")
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile(parse(read_dockerfile(folder / "Dockerfile")))
    assert wanted in str(info.value)


def test_every_case_has_its_expectation() -> None:
    assert len(POSITIVE) >= 15 and len(NEGATIVE) >= 40
    for case in POSITIVE:
        assert (HERE / "testfiles" / case / "expected.json").is_file(), case
    for case in NEGATIVE:
        assert (HERE / "testfiles-negative" / case / "error.txt").is_file(), case
