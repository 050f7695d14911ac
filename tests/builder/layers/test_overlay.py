"""Changesets from real overlayfs upper directories, checked against the snapshot differ
on the same change, and by applying both layers onto the lower tree."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from layer_helpers import hardlink_groups, tree_state

from builder.layers import (
    Changeset,
    EntryKind,
    OverlayFeatureUnsupported,
    Whiteout,
    apply_layer,
    changeset_from_upper,
    diff_snapshot,
    take_snapshot,
    write_layer,
)


def make_lower(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "bin").mkdir()
    (root / "bin" / "busybox").write_bytes(os.urandom(50_000))
    os.symlink("busybox", root / "bin" / "sh")
    (root / "var" / "cache" / "apt").mkdir(parents=True)
    for i in range(5):
        (root / "var" / "cache" / "apt" / f"pkg{i}.deb").write_bytes(os.urandom(1000))
    (root / "usr" / "share" / "doc").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "README").write_text("docs\n")
    (root / "opt" / "app" / "lib").mkdir(parents=True)
    (root / "opt" / "app" / "lib" / "old.so").write_text("old\n")
    (root / "opt" / "app" / "config").write_text("config\n")
    (root / "srv").write_text("a file that becomes a directory\n")
    (root / "home" / "user").mkdir(parents=True)
    (root / "home" / "user" / "notes").write_text("n\n")
    (root / "data").write_bytes(b"link me")


def step(root: Path) -> None:
    """The same 'RUN' applied to the overlay's merged dir and to a plain copy."""
    with open(root / "etc" / "hosts", "a") as f:           # modify a lower file
        f.write("10.0.0.1 db\n")
    os.unlink(root / "etc" / "passwd")                       # remove a lower file
    shutil.rmtree(root / "var" / "cache" / "apt")            # remove a lower subtree
    shutil.rmtree(root / "opt" / "app")                      # replace a directory
    (root / "opt" / "app").mkdir()
    (root / "opt" / "app" / "new.so").write_text("new\n")
    os.unlink(root / "srv")                                  # file -> directory
    (root / "srv").mkdir()
    (root / "srv" / "www").write_text("index\n")
    shutil.rmtree(root / "home" / "user")                    # directory -> file
    (root / "home" / "user").write_text("now a file\n")
    os.chmod(root / "usr" / "share" / "doc" / "README", 0o600)  # metadata only
    os.chown(root / "bin" / "busybox", 1000, 1000)
    os.chmod(root / "bin" / "busybox", 0o4755)
    os.setxattr(root / "usr" / "share" / "doc" / "README", "user.mime", b"text/plain")
    (root / "new" / "tree").mkdir(parents=True)              # new tree, links, fifo
    (root / "new" / "tree" / "a").write_bytes(b"hard")
    os.link(root / "new" / "tree" / "a", root / "new" / "b")
    os.link(root / "data", root / "new" / "data-link")       # link to a lower file
    os.symlink("../etc/hosts", root / "new" / "hosts")
    os.mkfifo(root / "new" / "fifo")
    os.rename(root / "bin" / "sh", root / "bin" / "ash")     # rename a lower symlink


def normalised(cs: Changeset) -> tuple[list[tuple], list[Whiteout]]:
    rows = []
    for e in cs.entries:
        content = None
        if e.kind is EntryKind.FILE:
            content = hashlib.sha256(Path(e.source).read_bytes()).hexdigest()
        rows.append((e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.link, e.devmajor,
                     e.devminor, e.xattrs, content))
    return rows, list(cs.whiteouts)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs (inode numbers never reused at once, unlike ext4: the snapshot differ can
    then tell a replaced directory from a modified one, as overlayfs does)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=False,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount tmpfs: {proc.stderr}")
        pytest.skip(f"cannot mount tmpfs: {proc.stderr}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def both_changesets(tmp_path: Path, overlay: Callable, plain_root: Path) -> tuple[Changeset, Changeset, Path]:
    lower = tmp_path / "lower"
    make_lower(lower)
    subprocess.run(["cp", "-a", f"{lower}/.", str(plain_root)], check=True)
    ov = overlay(lower)
    step(ov.merged)
    before = take_snapshot(plain_root)
    step(plain_root)
    from_snapshot = diff_snapshot(before, plain_root)
    assert tree_state(ov.merged) == tree_state(plain_root)  # the same change, twice
    ov.unmount()
    return changeset_from_upper(ov.upper), from_snapshot, lower


def test_overlay_and_snapshot_differ_give_the_same_changeset(tmp_path: Path, overlay: Callable,
                                                             tmpfs: Path) -> None:
    from_upper, from_snapshot, _ = both_changesets(tmp_path, overlay, tmpfs)
    assert normalised(from_upper) == normalised(from_snapshot)
    whiteouts = {(w.path, w.opaque) for w in from_upper.whiteouts}
    assert whiteouts == {
        ("etc/passwd", False), ("var/cache/apt", False), ("bin/sh", False),
        ("opt/app", True), ("srv", True),
    }
    kinds = {e.path: e.kind for e in from_upper.entries}
    assert kinds["new/b"] is EntryKind.HARDLINK or kinds["new/tree/a"] is EntryKind.HARDLINK
    assert {kinds["data"], kinds["new/data-link"]} == {EntryKind.FILE, EntryKind.HARDLINK}
    assert kinds["new/fifo"] is EntryKind.FIFO and kinds["home/user"] is EntryKind.FILE
    assert "bin/busybox" in kinds and "etc/hosts" in kinds
    assert "usr/share/doc/README" in kinds and "var/cache" in kinds
    readme = next(e for e in from_upper.entries if e.path == "usr/share/doc/README")
    assert readme.xattrs == (("user.mime", b"text/plain"),)  # overlay's own xattrs dropped
    assert "home/user/notes" not in from_upper.paths() and "etc/hosts" in from_upper.paths()


def test_both_layers_applied_to_the_lower_tree_give_the_merged_tree(tmp_path: Path,
                                                                    overlay: Callable) -> None:
    plain = tmp_path / "plain"  # ext4 here: inode reuse makes the differ write whiteouts
    plain.mkdir()               # for each removed child instead of an opaque marker
    from_upper, from_snapshot, lower = both_changesets(tmp_path, overlay, plain)
    expected = tree_state(plain)
    for name, cs in (("upper", from_upper), ("snapshot", from_snapshot)):
        blob = io.BytesIO()
        write_layer(cs, blob, source_date_epoch=0)
        target = tmp_path / f"applied-{name}"
        subprocess.run(["cp", "-a", f"{lower}/.", str(target)], check=True)
        apply_layer(io.BytesIO(blob.getvalue()), target)
        assert tree_state(target) == expected, name
        assert frozenset({"new/tree/a", "new/b"}) in hardlink_groups(target)


def test_gnu_tar_applies_the_overlay_layer(tmp_path: Path, overlay: Callable) -> None:
    lower = tmp_path / "lower"
    make_lower(lower)
    ov = overlay(lower)
    step(ov.merged)
    ov.unmount()
    blob = io.BytesIO()
    write_layer(changeset_from_upper(ov.upper), blob)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xz", "--xattrs", "--xattrs-include=user.*", "-C", str(out)],
                   input=blob.getvalue(), check=True)
    assert (out / "etc" / ".wh.passwd").stat().st_size == 0
    assert (out / "opt" / "app" / ".wh..wh..opq").exists()
    assert (out / "opt" / "app" / "new.so").read_text() == "new\n"
    assert os.getxattr(out / "usr" / "share" / "doc" / "README", "user.mime") == b"text/plain"


def test_redirect_dir_is_refused_with_the_fix(tmp_path: Path, overlay: Callable) -> None:
    lower = tmp_path / "lower"
    make_lower(lower)
    ov = overlay(lower, "redirect_dir=on")
    os.rename(ov.merged / "opt" / "app", ov.merged / "opt" / "moved")
    ov.unmount()
    with pytest.raises(OverlayFeatureUnsupported, match="redirect_dir=off"):
        changeset_from_upper(ov.upper)


def test_default_mount_renames_a_lower_dir_by_copy(tmp_path: Path, overlay: Callable) -> None:
    lower = tmp_path / "lower"
    make_lower(lower)
    ov = overlay(lower, "redirect_dir=off")
    subprocess.run(["mv", str(ov.merged / "opt" / "app"), str(ov.merged / "opt" / "moved")],
                   check=True)
    ov.unmount()
    cs = changeset_from_upper(ov.upper)
    assert Whiteout("opt/app") in cs.whiteouts
    assert {"opt/moved/lib/old.so", "opt/moved/config"} <= cs.paths()


def test_changeset_entries_are_sorted_and_frozen(tmp_path: Path, overlay: Callable) -> None:
    lower = tmp_path / "lower"
    make_lower(lower)
    ov = overlay(lower)
    step(ov.merged)
    ov.unmount()
    cs = changeset_from_upper(ov.upper)
    order = [getattr(x, "tar_name", None) or x.path for x in cs.tar_order()]
    assert order == sorted(order, key=lambda n: [(0, b"") if p == ".wh..wh..opq"
                                                 else (1, p.encode()) for p in n.split("/")])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.entries[0].path = "x"  # type: ignore[misc]


def test_userxattr_mounts_are_read(tmp_path: Path, overlay: Callable) -> None:
    lower = tmp_path / "lower"
    make_lower(lower)
    ov = overlay(lower, "userxattr")
    step(ov.merged)
    ov.unmount()
    assert os.getxattr(ov.upper / "opt" / "app", "user.overlay.opaque") == b"y"
    cs = changeset_from_upper(ov.upper)
    assert {(w.path, w.opaque) for w in cs.whiteouts if w.opaque} == {("opt/app", True),
                                                                     ("srv", True)}
    assert all(not name.startswith("user.overlay.") for e in cs.entries for name, _ in e.xattrs)


def test_metacopy_is_refused_with_the_fix(tmp_path: Path, overlay: Callable) -> None:
    lower = tmp_path / "lower"
    make_lower(lower)
    ov = overlay(lower, "metacopy=on,redirect_dir=on")
    os.chmod(ov.merged / "etc" / "hosts", 0o600)
    ov.unmount()
    with pytest.raises(OverlayFeatureUnsupported, match="metacopy.*metacopy=off"):
        changeset_from_upper(ov.upper)


def test_xattr_whiteouts_of_newer_kernels(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("trusted.* xattrs need root")
    upper = tmp_path / "upper"
    (upper / "dir").mkdir(parents=True)
    (upper / "dir" / "gone").write_bytes(b"")
    os.setxattr(upper / "dir" / "gone", "trusted.overlay.whiteout", b"")
    os.setxattr(upper / "dir", "trusted.overlay.opaque", b"x")  # "has xattr whiteouts"
    (upper / "dir" / "kept").write_bytes(b"")
    cs = changeset_from_upper(upper)
    assert cs.whiteouts == (Whiteout("dir/gone"),)
    assert [e.path for e in cs.entries] == ["dir", "dir/kept"]
