"""Property tests: for random trees and random steps, applying the step's layer to the
lower tree gives exactly the tree after the step (snapshot differ and overlayfs alike)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from layer_helpers import hardlink_groups, tree_state

from builder.layers import (
    apply_layer,
    changeset_from_upper,
    changeset_of_tree,
    diff_snapshot,
    take_snapshot,
    write_layer,
)

_name = st.sampled_from(["a", "b", "c", "dir", "é"])
_path = st.lists(_name, min_size=1, max_size=3).map("/".join)
_op = st.one_of(
    st.tuples(st.just("write"), _path, st.binary(max_size=300)),
    st.tuples(st.just("append"), _path, st.binary(min_size=1, max_size=30)),
    st.tuples(st.just("mkdir"), _path, st.none()),
    st.tuples(st.just("remove"), _path, st.none()),
    st.tuples(st.just("symlink"), _path, _path),
    st.tuples(st.just("link"), _path, _path),
    st.tuples(st.just("chmod"), _path, st.sampled_from([0o600, 0o755, 0o4755, 0o1777])),
    st.tuples(st.just("rename"), _path, _path),
    st.tuples(st.just("xattr"), _path, st.binary(max_size=20)),
)
_ops = st.lists(_op, max_size=14)


def run_ops(root: Path, ops: list) -> None:
    """Apply ``ops``; one that the tree does not allow (ENOENT, EEXIST...) is skipped."""
    for op, rel, arg in ops:
        p = root / rel
        try:
            if op == "write":
                if p.is_symlink() or p.is_dir():
                    continue
                p.write_bytes(arg)
            elif op == "append":
                if p.is_file() and not p.is_symlink():
                    with open(p, "ab") as f:
                        f.write(arg)
            elif op == "mkdir":
                p.mkdir()
            elif op == "remove":
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            elif op == "symlink":
                os.symlink(arg, p)
            elif op == "link":
                q = root / arg
                if q.is_file() and not q.is_symlink():
                    os.link(q, p)
            elif op == "chmod":
                if not p.is_symlink():
                    os.chmod(p, arg)
            elif op == "rename":
                os.rename(p, root / arg)  # into its own subtree: EINVAL, skipped
            elif op == "xattr" and not p.is_symlink() and p.exists():
                os.setxattr(p, "user.t", arg)
        except OSError:
            continue


def apply_to_copy(lower: Path, target: Path, blob: bytes) -> None:
    subprocess.run(["cp", "-a", f"{lower}/.", str(target)], check=True)
    apply_layer(io.BytesIO(blob), target)


_settings = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(base=_ops, step=_ops)
def test_snapshot_differ_layer_reproduces_the_step(tmp_path: Path, base: list, step: list) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    lower, plain, target = case / "lower", case / "plain", case / "target"
    for d in (lower, plain, target):
        d.mkdir(parents=True)
    run_ops(lower, base)
    subprocess.run(["cp", "-a", f"{lower}/.", str(plain)], check=True)
    before = take_snapshot(plain)
    run_ops(plain, step)
    blob = io.BytesIO()
    write_layer(diff_snapshot(before, plain), blob, workers=0)
    apply_to_copy(lower, target, blob.getvalue())
    assert tree_state(target) == tree_state(plain)
    assert hardlink_groups(target) == hardlink_groups(plain)


@_settings
@given(ops=_ops)
def test_directory_import_round_trips(tmp_path: Path, ops: list) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    src, out = case / "src", case / "out"
    src.mkdir(parents=True)
    out.mkdir()
    run_ops(src, ops)
    blob = io.BytesIO()
    write_layer(changeset_of_tree(src), blob, compression="zstd", avg_size=256, workers=2)
    apply_layer(io.BytesIO(blob.getvalue()), out)
    assert tree_state(out, mtimes=True) == tree_state(src, mtimes=True)
    assert hardlink_groups(out) == hardlink_groups(src)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=_ops, step=_ops)
def test_overlay_layer_reproduces_the_merged_tree(tmp_path: Path, overlay: Callable,
                                                  base: list, step: list) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))
    lower, target = case / "lower", case / "target"
    lower.mkdir(parents=True)
    target.mkdir()
    run_ops(lower, base)
    ov = overlay(lower)
    run_ops(ov.merged, step)
    expected = tree_state(ov.merged)
    ov.unmount()
    blob = io.BytesIO()
    write_layer(changeset_from_upper(ov.upper), blob, workers=0)
    apply_to_copy(lower, target, blob.getvalue())
    assert tree_state(target) == expected
