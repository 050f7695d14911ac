"""Storage directories with any name: relative, with spaces, non-ASCII letters, and the
characters a SQLite URI gives a meaning to ('?', '#', '%')."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cas import StoreConfig, open_store
from testkit.registries import RegistryProcess
from tests.helpers.cli import ROOT, assert_one_line_error, pybuild

NAMES = ["store #1", "store %41", "störe ?x", "space ü"]


@pytest.mark.parametrize("name", NAMES)
async def test_fsck_of_a_store_whose_name_a_uri_would_misread(tmp_path: Path, name: str) -> None:
    storage = tmp_path / name
    store = await open_store(StoreConfig(storage))
    try:
        await store.put(os.urandom(1 << 20))
    finally:
        await store.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = pybuild("storage", "fsck", "--storage", str(storage))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked 1 blobs" in proc.stdout and "clean" in proc.stdout, proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "fsck made a file beside it"


@pytest.mark.parametrize("name", ["store", "store #1"])
def test_serve_on_a_relative_storage_directory(tmp_path: Path, name: str) -> None:
    """``pybuild serve --storage DIR`` with DIR relative to the working directory."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def argv(addr: str) -> list[str]:
        serve = [sys.executable, "-m", "builder", "serve", "--addr", addr, "--storage", name]
        return ["sh", "-c", f"cd {shlex.quote(str(tmp_path))} && exec {shlex.join(serve)}"]

    blob = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with RegistryProcess("pybuild", argv, storage=tmp_path / name, env=env,
                         log=tmp_path / "serve.log") as running:
        req = urllib.request.Request(
            f"http://{running.addr}/v2/rel/blobs/uploads/?digest={digest}", data=blob,
            method="POST", headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.status == 201
        with urllib.request.urlopen(f"http://{running.addr}/v2/rel/blobs/{digest}",
                                    timeout=60) as resp:
            assert resp.read() == blob
    assert (tmp_path / name / "meta.db").is_file()


def _pybuild_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYBUILD_NO_FASTPATH="1")
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("args", [["images", "--storage", ""], ["storage", "stats", "--storage="],
                                  ["builder", "prune", "--storage", ""]])
def test_an_empty_storage_path_is_refused(tmp_path: Path, args: list[str]) -> None:
    """``--storage "$UNSET"``: no store appears in the current directory."""
    proc = _pybuild_in(tmp_path, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--storage: an empty path" in proc.stderr and "leave --storage out" in proc.stderr
    assert list(tmp_path.iterdir()) == [], "a store was made in the current directory"


@pytest.mark.parametrize("command", ["images", "rmi x/y:1", "pull 127.0.0.1:1/x/y:1",
                                     "storage stats"])
def test_a_file_given_as_storage_is_named(tmp_path: Path, command: str) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    proc = _pybuild_in(tmp_path, *command.split(), "--storage", "afile")
    assert_one_line_error(proc, "Invalid value for '--storage'", "'afile' is a file")
