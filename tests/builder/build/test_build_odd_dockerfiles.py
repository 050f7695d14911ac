"""Dockerfiles as editors and generators leave them: bytes that are not UTF-8 (a file
saved as Latin-1), exec forms nested deeper than a JSON parser goes, and .dockerignore
patterns naming files whose names are not UTF-8."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.build_cmd import build as build_command
from builder.dockerfile.instruction_parsers import parse_instruction
from builder.dockerfile.instructions import Cmd
from builder.dockerfile.syntax import parse
from builder.steps.common import BuildError
from tests.builder.build.conftest import Builder

LATIN1 = "# R\xe9sum\xe9 of the app\nFROM scratch\nLABEL name=caf\xe9\nCOPY f.txt /\n".encode("latin-1")


def test_a_latin1_dockerfile_builds_with_its_odd_bytes_replaced(build, tmp_path: Path) -> None:
    # BuildKit takes the bytes as they are; its JSON config shows them as U+FFFD.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("x\n")
    (ctx / "Dockerfile").write_bytes(LATIN1)
    result = build(ctx)
    assert result.image.config.config.labels == {"name": "caf\ufffd"}


def test_a_latin1_dockerfile_on_stdin_builds_too(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("x\n")
    out = tmp_path / "out"
    done = CliRunner().invoke(build_command, ["-f", "-", "--progress", "quiet", "--storage",
                                              str(tmp_path / "s"), "-o", str(out), str(ctx)],
                              input=LATIN1)
    assert done.exit_code == 0, done.output
    assert (out / "f.txt").read_text() == "x\n"


def test_an_exec_form_nested_too_deep_for_json_is_a_shell_form() -> None:
    # Go's decoder stops at 10,000 levels, Python's sooner: both then take the text as a
    # shell form, where the build used to stop with an internal RecursionError.
    deep = "[" * 200_000 + "]" * 200_000
    cmd = parse_instruction(parse(f"FROM scratch\nCMD {deep}\n", "Dockerfile").nodes[-1])
    assert isinstance(cmd, Cmd)
    assert cmd.shell_form and cmd.command == (deep,)


def test_a_dockerignore_pattern_matches_a_name_that_is_not_utf8(build, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    odd = os.fsdecode(b"caf\xe9.txt")  # a Latin-1 name, as an old archive leaves it
    (ctx / odd).write_text("secret\n")
    (ctx / "kept.txt").write_text("kept\n")
    (ctx / ".dockerignore").write_bytes(b"caf\xe9.txt\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY . /ctx/\n")
    out = tmp_path / "out"
    build(ctx, local=out)
    assert sorted(os.listdir(out / "ctx")) == [".dockerignore", "Dockerfile", "kept.txt"]


def test_parse_warnings_and_a_foreign_frontend_are_warned_of_by_build(tmp_path: Path) -> None:
    # BuildKit warns of an empty continuation line; a `# syntax=` naming a front end other
    # than docker/dockerfile would run that front end, which pybuild does not (both were
    # silent: the build went on as if nothing was odd).
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("# syntax=example.com/team/frontend:2\nFROM scratch\n"
                                    "LABEL a=1 \\\n\n    b=2\n")
    done = CliRunner().invoke(build_command, ["--progress", "plain", "--storage",
                                              str(tmp_path / "s"), str(ctx)])
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.output.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING: Dockerfile:1: # syntax=example.com/team/frontend:2 names a front end "
        "pybuild does not run; pybuild builds the file with its own Dockerfile front end",
        "WARNING: Dockerfile:5: empty continuation line found in: LABEL a=1     b=2"]


def test_the_dockerfile_frontends_syntax_lines_are_no_warning(tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for i, syntax in enumerate(["docker/dockerfile:1", "docker.io/docker/dockerfile:1.7-labs",
                                "docker/dockerfile-upstream:master",
                                "docker/dockerfile@sha256:" + "a" * 64]):
        (ctx / "Dockerfile").write_text(f"# syntax={syntax}\nFROM scratch\nLABEL a={i}\n")
        done = CliRunner().invoke(build_command, ["--progress", "plain", "--storage",
                                                  str(tmp_path / "s"), str(ctx)])
        assert done.exit_code == 0, done.output
        assert "WARNING" not in done.output, syntax


def test_an_env_name_that_expands_to_nothing_fails_the_run_clearly(busybox_ref: str,
                                                                    build: Builder,
                                                                    tmp_path: Path) -> None:
    # BuildKit takes the ENV and runc refuses the RUN ("environment variable name can't be
    # empty"); pybuild's sandbox died with a Python traceback.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nENV $UNSET=2\nRUN true\n")
    with pytest.raises(BuildError, match="Dockerfile:3: RUN: environment variable name can't "
                                         "be empty: '=2'"):
        build(ctx)


@pytest.mark.parametrize("lines,kind", [
    ("RUN echo " + "x" * 140_000, "the command is 140005 bytes"),
    ("ENV BIG=" + "y" * 140_000 + "\nRUN true", "an environment variable is 140004 bytes"),
])
def test_a_run_too_long_for_execve_says_so(busybox_ref: str, build: Builder, tmp_path: Path,
                                           lines: str, kind: str) -> None:
    # pybuild reads lines over BuildKit's old 64 KiB limit, but Linux caps one argument or
    # variable at 128 KiB; the error said "could not set up the sandbox" and named bwrap.
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\n{lines}\n")
    with pytest.raises(BuildError, match=f"RUN: {kind}, more than Linux lets one argument or "
                                         r"variable of a process hold \(131071\); put the long "
                                         "text in a file"):
        build(ctx)


def test_a_run_just_short_enough_for_execve_runs(busybox_ref: str, build: Builder,
                                                 tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    value = "v" * (131071 - len("BIG="))
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nENV BIG={value}\n"
                                    "RUN echo ${#BIG} > /n\n")
    build(ctx, local=tmp_path / "out")
    assert (tmp_path / "out" / "n").read_text() == f"{len(value)}\n"
