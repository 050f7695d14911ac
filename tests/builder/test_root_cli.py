"""The root ``pybuild`` group: every package's commands are listed, and a command's
module is imported only when that command runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from builder.cli import COMMANDS, SUMMARIES, LazyGroup, main

EVERY_COMMAND = {"build", "parse", "serve", "pull", "push", "copy", "images", "rmi", "login",
                 "logout", "storage", "builder", "robot", "tag", "inspect", "history"}


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == EVERY_COMMAND == set(COMMANDS)


def test_every_lazy_entry_is_the_command_it_names() -> None:
    ctx = click.Context(main)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name


def _run_and_list_modules(args: list[str], prefixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``pybuild ARGS`` in a new interpreter: what it printed (lines), and the modules
    whose names start with one of ``prefixes`` it had imported by then (sorted)."""
    code = ("import sys, json\nfrom builder.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *printed, modules = out.stdout.strip().splitlines()
    return printed, json.loads(modules)


def test_pull_does_not_import_the_builder_or_the_server() -> None:
    _, loaded = _run_and_list_modules(["pull", "--help"], ("builder.", "registry.server"))
    assert loaded == ["builder.cli", "builder.commands"], loaded


def test_help_lists_each_command_by_its_summary_without_importing_any() -> None:
    help_lines, modules = _run_and_list_modules(["--help"], ("builder", "registry", "cas"))
    assert modules == ["builder", "builder.cli", "builder.commands", "registry", "registry.cli"]
    listed = dict(line.split(None, 1) for line in "\n".join(help_lines).split("Commands:")[1].splitlines()
                  if line.strip())
    assert listed == SUMMARIES


def test_a_command_imported_says_the_same_line_as_its_summary() -> None:
    assert set(SUMMARIES) == set(COMMANDS)
    ctx = click.Context(main)
    for name, summary in SUMMARIES.items():
        command = main.get_command(ctx, name)
        assert command is not None and command.get_short_help_str(limit=200) == summary, name
    result = CliRunner().invoke(main, ["--help"])
    assert all(f"  {summary}" in result.output for summary in SUMMARIES.values()), result.output


def test_images_does_not_import_the_transfer_machinery(tmp_path: Path) -> None:
    _, modules = _run_and_list_modules(["images", "--storage", str(tmp_path)],
                                       ("registry.client", "http.client"))
    loaded = set(modules)
    assert "registry.client.image_store" in loaded  # it did list the images
    assert not loaded & {"registry.client.copy", "registry.client.pull", "registry.client.remote",
                         "http.client"}, loaded


def test_a_wrong_table_entry_fails_loudly() -> None:
    group = LazyGroup(name="x", lazy={"pull": "registry.client.cli:push"})
    with pytest.raises(RuntimeError, match="registry.client.cli:push"):
        group.get_command(click.Context(group), "pull")
