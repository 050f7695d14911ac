"""What a command imports before it does its work: every command pays for its imports at
each start (a CI job runs pybuild hundreds of times), so a module only some paths need
stays out of the commands that do not take them. Structural: which modules, never how
long they took. The transfer commands run for real in tests/client/test_cli_imports.py."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_importing(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``pybuild ARGS`` run as a user runs it (``python -m builder``), and the modules it
    imported (``python -X importtime`` names each one as it is first imported)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "builder", *args],
                         capture_output=True, text=True, cwd=REPO)
    modules = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
               if line.startswith("import time:") and line.count("|") == 2}
    return out, modules


def test_version_is_read_without_the_installed_metadata() -> None:
    """``pybuild --version`` says the installed version without importlib.metadata (which
    took longer to import than all the rest of the command), and without what only a
    build's fast path (hashlib, json) or another command needs."""
    out, modules = run_importing("--version")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == f"pybuild, version {importlib.metadata.version('pybuild')}\n"
    unneeded = {"importlib.metadata", "hashlib", "json", "asyncio", "registry.client.cli"}
    assert not modules & unneeded, sorted(modules & unneeded)


# What a transfer or registry command only needs once it runs: its help and a refused
# command line are answered without them.
RUN_ONLY = {"asyncio", "ssl", "http.client", "tempfile", "aiohttp", "cas.store",
            "registry.server", "registry.client.remote"}


@pytest.mark.parametrize("command", ["pull", "push", "copy", "rmi", "login", "logout", "serve"])
def test_help_imports_nothing_the_command_needs_only_to_run(command: str) -> None:
    out, modules = run_importing(command, "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"Usage: python -m builder {command} " in out.stdout
    assert not modules & RUN_ONLY, sorted(modules & RUN_ONLY)


def test_a_refused_command_line_imports_nothing_the_command_needs_only_to_run() -> None:
    out, modules = run_importing("pull", "--jobs", "0", "example.com/a:1")
    assert out.returncode == 2 and "--jobs" in out.stderr
    assert not modules & RUN_ONLY, sorted(modules & RUN_ONLY)
