"""A storage directory of another user: every command says whose it is and the fix.

A store made by root, used by a throw-away user (``testkit.users``), and a user's store
used by root. The user cannot write to root's store; root could, but every file it made
there would be root's, and the user could no longer change or remove it (gc and pulls
then fail on them). Both ways every command prints one line naming the path, its owner
and the fix (run as the owner, or ``chown -R``), exits non-zero, and writes nothing.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.tools import require_root
from testkit.users import SystemUser, python_for, shared_workspace, temporary_user
from tests.helpers.cli import assert_one_line_error, pybuild

COMMANDS = {
    "images": ["images"],
    "storage gc": ["storage", "gc"],
    "builder prune": ["builder", "prune", "--all"],
    "build": ["build", "--progress", "quiet", "CONTEXT"],
    "serve": ["serve", "--addr", "127.0.0.1:0"],
}


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    """A directory both root and the test user can read (pytest's tmp dirs are 0700)."""
    require_root("the ownership tests create a user")
    with shared_workspace("pybuild-owner-") as ws:
        ctx = ws / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY Dockerfile /Dockerfile\n")
        subprocess.run(["chmod", "-R", "a+rX", str(ws)], check=True)
        yield ws


@pytest.fixture(scope="module")
def user() -> Iterator[SystemUser]:
    with temporary_user("pybuild-own") as u:
        yield u


def _args(command: str, storage: Path, workspace: Path) -> list[str]:
    args = [str(workspace / "ctx") if a == "CONTEXT" else a for a in COMMANDS[command]]
    return [*args, "--storage", str(storage)]


def _files(storage: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.lstat().st_uid) for p in storage.rglob("*"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_root_store_used_by_a_user_is_one_clear_line(
        workspace: Path, user: SystemUser, command: str) -> None:
    storage = workspace / f"root-{command.replace(' ', '-')}"
    made = pybuild("build", "--progress", "quiet", "--storage", str(storage),
                   str(workspace / "ctx"))
    assert made.returncode == 0, made.stderr
    before = _files(storage)
    python, env = python_for(user)
    for _ in range(2):
        proc = user.run(*python, "-m", "builder", *_args(command, storage, workspace),
                        env=env, timeout=120)
        assert_one_line_error(proc, f"{storage}", "belongs to root", f"{user.name} cannot write",
                              "run pybuild as root", f"sudo chown -R {user.name} {storage}")
    assert _files(storage) == before


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_user_store_used_by_root_is_one_clear_line(
        workspace: Path, user: SystemUser, command: str) -> None:
    storage = workspace / f"user-{command.replace(' ', '-')}"
    storage.mkdir()
    os.chown(storage, user.uid, user.gid)
    for _ in range(2):
        assert_one_line_error(pybuild(*_args(command, storage, workspace)),
                              f"{storage} belongs to {user.name}", "files root made there",
                              f"run pybuild as {user.name}", f"chown -R root {storage}")
    assert _files(storage) == [], "root wrote into the user's store"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_own_store_made_read_only_is_one_clear_line(
        workspace: Path, user: SystemUser, command: str) -> None:
    # A non-root build runs as root of a user namespace, where the modes of the user's
    # own files would not stop it: it says so before, as every other command does.
    storage = workspace / f"read-only-{command.replace(' ', '-')}"
    storage.mkdir()
    os.chown(storage, user.uid, user.gid)
    python, env = python_for(user)
    made = user.run(*python, "-m", "builder", *_args("build", storage, workspace), env=env)
    assert made.returncode == 0, made.stderr
    subprocess.run(["chmod", "-R", "a-w", str(storage)], check=True)
    before = _files(storage)
    for _ in range(2):
        proc = user.run(*python, "-m", "builder", *_args(command, storage, workspace),
                        env=env, timeout=120)
        assert_one_line_error(proc, "storage not writable", str(storage), "permission denied",
                              "give this user write access")
    assert _files(storage) == before
