"""``pybuild parse`` through click's CliRunner, and the public surface of the modules."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main
from builder.dockerfile.errors import DockerfileError, unknown_flag, unknown_instruction
from builder.dockerfile.instruction_parsers import PARSERS, parse_instruction
from builder.dockerfile.instructions import Instruction
from builder.dockerfile.syntax import Keyword, parse

HERE = Path(__file__).parent
MULTI = HERE / "testfiles-stages" / "multi-stage-graph" / "Dockerfile"


def test_parse_prints_instructions_with_lines_and_flags() -> None:
    result = CliRunner().invoke(main, ["parse", "-f", str(MULTI)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["1-1", "FROM", '["golang:1.22",', '"AS",', '"deps"]']
    assert any(line.startswith("   6-6    RUN --mount=type=cache,target=/root/.cache ")
               for line in lines)


def test_parse_json_matches_library() -> None:
    result = CliRunner().invoke(main, ["parse", "-f", str(MULTI), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [i["instruction"] for i in doc["instructions"]][:3] == ["FROM", "RUN", "FROM"]
    assert doc["instructions"][3]["lines"] == [5, 5]
    assert doc["instructions"][3]["parsed"]["env"] == [{"key": "CGO_ENABLED", "value": "0"}]


def test_parse_expand_with_target_and_build_args(tmp_path: Path) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text("ARG V=1\nFROM alpine:$V AS a\nARG V\nLABEL v=$V\nFROM a AS b\n"
                  "FROM busybox AS c\n")
    runner = CliRunner()
    result = runner.invoke(main, ["parse", "-f", str(df), "--json", "--build-arg", "V=2",
                                  "--target", "b"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["needed"] == [0, 1]
    assert doc["stages"][0]["instructions"][0]["image"] == "alpine:2"
    assert doc["stages"][0]["instructions"][2]["labels"] == [{"key": "v", "value": "2"}]
    text = runner.invoke(main, ["parse", "-f", str(df), "--target", "b"])
    assert text.exit_code == 0, text.output
    assert "target: b; builds: a, b" in text.output


def test_parse_error_exits_1_with_location(tmp_path: Path) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text("FROM alpine\n\nRUNN echo hi\n")
    result = CliRunner().invoke(main, ["parse", "-f", str(df)])
    assert result.exit_code == 1
    assert f"unknown instruction 'RUNN' at {df}:3:1; did you mean RUN?" in result.output


def test_parse_reads_stdin() -> None:
    result = CliRunner().invoke(main, ["parse", "-f", "-"], input="FROM alpine\nCOPY --from=x a b\n")
    assert result.exit_code == 0, result.output
    assert "COPY --from=x" in result.output


def test_parse_missing_file_and_bad_build_arg(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["parse", "-f", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "cannot read" in missing.output
    df = tmp_path / "Dockerfile"
    df.write_text("FROM alpine\n")
    bad = runner.invoke(main, ["parse", "-f", str(df), "--build-arg", "NOVALUE"])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output


def test_unknown_target_suggests() -> None:
    result = CliRunner().invoke(main, ["parse", "-f", str(MULTI), "--target", "relase"])
    assert result.exit_code == 1
    assert "target stage 'relase' could not be found" in result.output
    assert "did you mean release?" in result.output


def test_errors_are_worded_by_the_helpers() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nEXPOS 80\n")
    assert info.value.problem == unknown_instruction("EXPOS", list(Keyword))
    assert (info.value.line, info.value.column) == (2, 1)
    node = parse("FROM a\nADD --chwon=1 a b\n").nodes[1]
    with pytest.raises(DockerfileError) as info:
        parse_instruction(node)
    assert info.value.problem == unknown_flag(
        "ADD", "chwon", ["chown", "chmod", "link", "keep-git-dir", "checksum", "unpack",
                         "exclude"])
    assert info.value.column == 5


# one line per keyword: every name of the table has a typed instruction
SAMPLES = {
    Keyword.ADD: "ADD a b", Keyword.ARG: "ARG a", Keyword.CMD: "CMD x",
    Keyword.COPY: "COPY a b", Keyword.ENTRYPOINT: "ENTRYPOINT x", Keyword.ENV: "ENV a=b",
    Keyword.EXPOSE: "EXPOSE 80", Keyword.FROM: "FROM a",
    Keyword.HEALTHCHECK: "HEALTHCHECK NONE", Keyword.LABEL: "LABEL a=b",
    Keyword.MAINTAINER: "MAINTAINER me", Keyword.ONBUILD: "ONBUILD RUN x",
    Keyword.RUN: "RUN x", Keyword.SHELL: 'SHELL ["sh", "-c"]', Keyword.STOPSIGNAL: "STOPSIGNAL 9",
    Keyword.USER: "USER u", Keyword.VOLUME: "VOLUME /v", Keyword.WORKDIR: "WORKDIR /w",
}


@pytest.mark.parametrize("keyword", list(Keyword))
def test_every_keyword_has_a_typed_instruction(keyword: Keyword) -> None:
    typed = parse_instruction(parse(SAMPLES[keyword]).nodes[0])
    assert isinstance(typed, Instruction)
    assert typed.keyword is keyword
    lower = parse_instruction(parse(SAMPLES[keyword].lower()).nodes[0])
    assert lower.keyword is keyword


def test_the_parser_table_covers_every_keyword() -> None:
    assert set(PARSERS) == set(Keyword)


@pytest.mark.parametrize("module", [
    f"builder.dockerfile.{name}" for name in (
        "errors", "syntax", "line_parsers", "shell_lex", "instructions", "instruction_parsers",
        "flags", "mounts", "stages", "parse_cmd")
] + ["builder.dockerfile"])
def test_exports_exist(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_stages_import_only_the_stage_before() -> None:
    # syntax knows nothing of typed instructions; instructions nothing of expansion
    for module, forbidden in [("syntax", ("instructions", "instruction_parsers", "stages")),
                              ("instructions", ("instruction_parsers", "stages", "parse_cmd")),
                              ("instruction_parsers", ("stages", "parse_cmd")),
                              ("shell_lex", ("syntax", "instructions", "stages"))]:
        text = (HERE.parent.parent / "builder" / "dockerfile" / f"{module}.py").read_text()
        for other in forbidden:
            assert f"from .{other} import" not in text, (module, other)
