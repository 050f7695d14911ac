"""docker's flag words: every boolean flag takes ``--flag=true|false`` (pflag), the classic
builder's resource flags are accepted and ignored as docker build with BuildKit and buildx
do, and ``--cache-from a,b`` is a list of images, as buildx reads it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from builder.cache.spec import CacheSpecError, parse_cache_specs
from builder.cli import COMMANDS, accept_flag_values, main


def _every_command() -> list[tuple[str, click.Command]]:
    """(path, command) for every command and subcommand of ``pybuild``."""
    out: list[tuple[str, click.Command]] = []

    def walk(path: str, command: click.Command) -> None:
        out.append((path, command))
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                walk(f"{path} {name}", sub)

    ctx = click.Context(main)
    for name in sorted(COMMANDS):
        command = main.get_command(ctx, name)
        assert command is not None
        walk(name, command)
    return out


BOOL_FLAGS = [(path, opt, param.name) for path, command in _every_command()
              for param in command.params
              if isinstance(param, click.Option) and param.is_flag and param.is_bool_flag
              and param.expose_value for opt in param.opts]


def test_there_are_flags_to_check() -> None:
    names = {(path, opt) for path, opt, _ in BOOL_FLAGS}
    assert {("build", "--pull"), ("build", "--rm"), ("build", "-q"), ("images", "-q"),
            ("rmi", "-f"), ("push", "--quiet"), ("builder prune", "--all")} <= names


@pytest.mark.parametrize(("path", "opt", "name"), BOOL_FLAGS)
def test_every_boolean_flag_takes_true_and_false(path: str, opt: str, name: str) -> None:
    """As pflag: ``--flag=false`` is the flag unset, ``--flag=true`` (and ``1``, ``T``...)
    set, the last occurrence winning."""
    ctx = click.Context(main)
    command: click.Command | None = main
    for word in path.split():
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, word)
    assert command is not None

    def parsed(*args: str) -> object:
        sub = command.make_context(path, list(args), resilient_parsing=True)
        return sub.params[name]

    assert parsed(f"{opt}=true") is True and parsed(f"{opt}=1") is True
    assert parsed(f"{opt}=false") is False and parsed(f"{opt}=F") is False
    assert parsed(opt, f"{opt}=false") is False
    assert parsed(f"{opt}=false", opt) is True


def _command() -> click.Command:
    @click.command()
    @click.option("--pull", is_flag=True)
    @click.option("-q", "--quiet", is_flag=True)
    @click.option("-t", "--tag", multiple=True)
    @click.argument("context", required=False)
    def cmd(pull: bool, quiet: bool, tag: tuple[str, ...], context: str | None) -> None:
        click.echo(f"pull={pull} quiet={quiet} tag={list(tag)} context={context}")

    accept_flag_values(cmd)
    return cmd


@pytest.mark.parametrize(("args", "printed"), [
    (["--pull=false", "ctx"], "pull=False quiet=False tag=[] context=ctx"),
    (["--pull=True", "-q=0", "ctx"], "pull=True quiet=False tag=[] context=ctx"),
    # a value is only ever given with '=': here "false" is the context
    (["--pull", "false"], "pull=True quiet=False tag=[] context=false"),
    # an option's value that looks like a flag stays the value
    (["-t", "--pull=false", "ctx"], "pull=False quiet=False tag=['--pull=false'] context=ctx"),
    (["--", "--pull=false"], "pull=False quiet=False tag=[] context=--pull=false"),
    # a short option's value after '=', as docker's -t=x (click alone would read "=x")
    (["-t=x", "-tq", "ctx"], "pull=False quiet=False tag=['x', 'q'] context=ctx"),
])
def test_flag_values_as_pflag_reads_them(args: list[str], printed: str) -> None:
    got = CliRunner().invoke(_command(), args)
    assert got.exit_code == 0, got.output
    assert got.output.strip() == printed


def test_a_flag_value_that_is_no_boolean_is_refused() -> None:
    got = CliRunner().invoke(_command(), ["--pull=maybe", "ctx"])
    assert got.exit_code == 2
    assert "'maybe' is not a boolean: give --pull, --pull=true or --pull=false" in got.output


def test_build_takes_the_classic_builders_flags_with_values(tmp_path: Path) -> None:
    """``docker build --rm=false --pull=false --memory 1g --cpu-shares 2 ... .``: docker
    (20.10, BuildKit) builds and ignores the resource flags; buildx warns for --squash."""
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY a /a\n")
    (tmp_path / "a").write_text("a\n")
    args = ["build", "-q", "--storage", str(tmp_path / "s"), "--rm=false", "--force-rm=false",
            "--pull=false", "--no-cache=false", "--compress=true", "-m", "64m", "--memory", "1g",
            "--memory-swap", "2g", "-c", "2", "--cpu-shares", "512", "--cpu-period", "100000",
            "--cpu-quota", "50000", "--cpuset-cpus", "0-1", "--cpuset-mems", "0",
            "--cgroup-parent", "ci", "--disable-content-trust", "--isolation", "default",
            "--security-opt", "seccomp=unconfined", "--squash", str(tmp_path)]
    got = CliRunner().invoke(main, args)
    assert got.exit_code == 0, got.output
    assert got.stdout.startswith("sha256:") and got.stdout.count("\n") == 1
    assert "WARNING: experimental flag squash is removed with BuildKit" in got.stderr
    assert "WARNING: isolation flag is deprecated with BuildKit." in got.stderr
    refused = CliRunner().invoke(main, ["build", "--cpu-shares", "two", str(tmp_path)])
    assert refused.exit_code == 2 and "'two' is not a valid integer" in refused.output
    trust = CliRunner().invoke(main, ["build", "--disable-content-trust=false", str(tmp_path)])
    assert trust.exit_code == 2
    assert "content trust (Notary signatures) is not supported" in trust.output


@pytest.mark.parametrize("export", [False, True])
def test_cache_from_takes_a_list_of_images(export: bool) -> None:
    """buildx's ParseCacheEntry: fields with no ``key=value`` are image references each
    (``docker build --cache-from a,b`` takes a list too)."""
    specs = parse_cache_specs("example.com/app:cache,example.com/app:main", export=export)
    assert [(s.type, s.where) for s in specs] == [("registry", "example.com/app:cache"),
                                                  ("registry", "example.com/app:main")]
    one = parse_cache_specs("type=local,src=/c,dest=/c", export=export)
    assert [(s.type, s.where) for s in one] == [("local", "/c")]
    with pytest.raises(CacheSpecError, match="'b' is not key=value"):
        parse_cache_specs("type=registry,ref=a,b", export=export)


def test_build_reads_cache_to_as_a_list(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    got = CliRunner().invoke(main, ["build", "--storage", str(tmp_path / "s"), "--cache-to",
                                    "127.0.0.1:1/app:cache,b/c:d:e", str(tmp_path)])
    # each is read as an image reference, and the second is no valid one
    assert got.exit_code == 2, got.output
    assert "Invalid value for --cache-to: invalid image reference 'b/c:d:e'" in got.output
    assert "is not key=value" not in got.output
