"""builder.layers.rootwalk: the one in-root path walk, and each of its users on the same
tree (layer extraction's resolve_in_root, COPY's resolve_in_lowers, the sandbox's mount
point resolution, which runs as an isolated script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder.layers.errors import UnsafeLayerEntry
from builder.layers.pathres import resolve_in_root
from builder.layers.rootwalk import MAX_SYMLINKS, SymlinkLoop, walk_in_root
from builder.sandbox import _stage
from builder.steps.copy import resolve_in_lowers


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr" / "lib").mkdir(parents=True)
    (r / "usr" / "lib" / "f").write_text("x")
    (r / "lib").symlink_to("/usr/lib")  # absolute: inside the root, never the host's
    (r / "rel").symlink_to("usr/../usr/lib")
    (r / "up").symlink_to("../../../../usr")  # climbs no higher than the root
    (r / "file-link").symlink_to("lib/f")
    (r / "loop-a").symlink_to("loop-b")
    (r / "loop-b").symlink_to("loop-a")
    return r


CASES = [  # path, follow_final, resolved
    ("lib/f", False, "usr/lib/f"),
    ("/lib/./f", False, "usr/lib/f"),
    ("rel/f", False, "usr/lib/f"),
    ("up/lib", False, "usr/lib"),
    ("../../lib/f", False, "usr/lib/f"),
    ("lib/missing/deeper", False, "usr/lib/missing/deeper"),
    ("file-link", False, "file-link"),
    ("file-link", True, "usr/lib/f"),
    ("lib", True, "usr/lib"),
    ("", False, ""),
]


def _on_disk(root: Path):  # type: ignore[no-untyped-def]
    def lstat(c: list[str]) -> os.stat_result | None:
        try:
            return os.lstat(os.path.join(root, *c))
        except FileNotFoundError:
            return None
    return lstat, lambda c: os.readlink(os.path.join(root, *c))


@pytest.mark.parametrize(("path", "follow", "want"), CASES)
def test_the_walk_and_its_users_agree(root: Path, path: str, follow: bool, want: str) -> None:
    lstat, readlink = _on_disk(root)
    assert "/".join(walk_in_root(path.split("/"), lstat=lstat, readlink=readlink,
                                 follow_final=follow)) == want
    parts = [p for p in path.split("/") if p]
    assert resolve_in_root(str(root), parts, follow_final=follow) == \
        (os.path.join(str(root), *want.split("/")) if want else str(root))
    assert resolve_in_lowers([root], path, follow_final=follow) == "/" + want


def test_missing_components_are_reported_in_order(root: Path) -> None:
    lstat, readlink = _on_disk(root)
    seen: list[tuple[str, bool]] = []
    walk_in_root(["lib", "a", "b"], lstat=lstat, readlink=readlink, follow_final=True,
                 missing=lambda c, last: seen.append(("/".join(c), last)))
    assert seen == [("usr/lib/a", False), ("usr/lib/a/b", True)]


def test_a_symlink_loop_is_refused_by_each_user(root: Path) -> None:
    lstat, readlink = _on_disk(root)
    with pytest.raises(SymlinkLoop, match=str(MAX_SYMLINKS)):
        walk_in_root(["loop-a"], lstat=lstat, readlink=readlink, follow_final=True)
    with pytest.raises(UnsafeLayerEntry, match="symlinks on its path"):
        resolve_in_root(str(root), ["loop-a", "x"], name="loop-a/x")
    assert resolve_in_lowers([root], "/loop-a/x", follow_final=False) == "/"
    with pytest.raises(_stage.SetupError, match="too many levels"):
        _stage.resolve(str(root), "/loop-a", "dir", [])


def test_the_sandbox_makes_missing_mount_points_inside_the_root(root: Path) -> None:
    created: list[str] = []
    assert _stage.resolve(str(root), "/lib/new/point", "file", created) == \
        str(root / "usr" / "lib" / "new" / "point")
    assert created == ["usr/lib/new", "usr/lib/new/point"]
    assert (root / "usr/lib/new").is_dir() and (root / "usr/lib/new/point").is_file()
    with pytest.raises(_stage.SetupError, match="does not exist"):
        _stage.resolve(str(root), "/lib/absent", None, [])


def test_the_sandbox_script_loads_the_walk_when_isolated(root: Path) -> None:
    # As process.py runs it: `python3 -I _stage.py`, nothing of pybuild on sys.path.
    code = ("import runpy, sys; ns = runpy.run_path(sys.argv[1], run_name='stage'); "
            "print(ns['resolve'](sys.argv[2], '/lib/f', None, []))")
    out = subprocess.run([sys.executable, "-I", "-c", code, _stage.__file__, str(root)],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(root / "usr" / "lib" / "f")
