"""A ``HOME`` (or ``XDG_DATA_HOME``, ``DOCKER_CONFIG``) that is a regular file, as a
service account's may be: every command that derives a path from it says which variable
is wrong and what to do, never a bare "Not a directory"."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from builder.cli import main

STORAGE_COMMANDS = [["images"], ["rmi", "app:1"], ["tag", "app:1", "app:2"], ["inspect", "app:1"],
                    ["pull", "127.0.0.1:1/app:1"], ["storage", "stats"],
                    ["storage", "gc"], ["builder", "prune"], ["build", "CONTEXT"]]


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    return ctx


def _run(args: list[str], context: Path, **env: str) -> tuple[int, str]:
    clean = {"PYBUILD_STORAGE": None, "XDG_DATA_HOME": None, "DOCKER_CONFIG": None}
    got = CliRunner().invoke(main, [str(context) if a == "CONTEXT" else a for a in args],
                             env={**clean, **env})
    assert "Traceback" not in got.output and "Errno" not in got.output, got.output
    return got.exit_code, got.output


@pytest.mark.parametrize("args", STORAGE_COMMANDS, ids=" ".join)
def test_a_home_that_is_a_file(tmp_path: Path, context: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    home.write_text("")
    code, output = _run(args, context, HOME=str(home))
    assert code == 1
    assert (f"Error: HOME={home} is not a directory, so the default storage directory "
            f"{home}/.local/share/pybuild cannot be there; set HOME to a directory (or unset "
            "it), or name the storage directory: --storage DIR or PYBUILD_STORAGE=DIR") in output


def test_a_file_on_the_way_and_xdg_data_home(tmp_path: Path, context: Path) -> None:
    home = tmp_path / "home"
    (home / ".local").mkdir(parents=True)
    (home / ".local" / "share").write_text("")
    code, output = _run(["images"], context, HOME=str(home))
    assert code == 1
    assert (f"Error: {home}/.local/share is not a directory, so the default storage "
            f"directory {home}/.local/share/pybuild cannot be there (HOME={home}); move that "
            "file out of the way") in output
    data = tmp_path / "data"
    data.write_text("")
    code, output = _run(["images"], context, XDG_DATA_HOME=str(data))
    assert code == 1 and f"Error: XDG_DATA_HOME={data} is not a directory" in output
    # named storage: HOME is not needed, and the command works
    assert _run(["images", "--storage", str(tmp_path / "s")], context, HOME=str(data))[0] == 0


def test_dockers_config_under_a_home_that_is_a_file(tmp_path: Path, context: Path) -> None:
    home = tmp_path / "home"
    home.write_text("")
    code, output = _run(["logout", "127.0.0.1:1"], context, HOME=str(home))
    assert code == 1
    assert (f"Error: HOME={home} is not a directory, so Docker's config file "
            f"{home}/.docker/config.json cannot be there; set HOME to a directory (or unset "
            "it), or set DOCKER_CONFIG to a directory for config.json") in output
    code, output = _run(["logout", "127.0.0.1:1"], context, DOCKER_CONFIG=str(home))
    assert code == 1
    assert f"Error: DOCKER_CONFIG={home} is not a directory" in output
