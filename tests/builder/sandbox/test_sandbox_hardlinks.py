"""Hard links made in one step and changed through one of their names in a later step.

As with ``docker build``, the change shows under every name of the link group and the
step's changes keep the names linked, whichever differ captured them (overlayfs with the
copied-up group repaired by ``builder.sandbox.linkgroups``, or the snapshot differ).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from builder.layers import Changeset, EntryKind, changeset_from_upper
from builder.sandbox import Executor, RootfsMode, RunSpec, run_step
from tests.helpers.sandbox_steps import PATH, Runner

MODES = [RootfsMode.OVERLAY, RootfsMode.COPY]

FIRST = ("mkdir -p /data/sub && echo a > /data/f1 && ln /data/f1 /data/sub/f2 "
         "&& echo one > /data/g1 && ln /data/g1 /data/g2 && ln /data/g1 /data/g3")


class Steps:
    """Runs steps one on top of the other, each step's changes as an upper dir."""

    def __init__(self, base: Path, tmp: Path, executor: Executor, mode: RootfsMode) -> None:
        self.lowers = [base]
        self.tmp = tmp
        self.executor = executor
        self.mode = mode
        self.output: list[str] = []

    def run(self, script: str) -> Path:
        self.output = []
        result = run_step(
            RunSpec(argv=("/bin/sh", "-c", script), env=(PATH,)),
            lowers=self.lowers, state_dir=self.tmp / f"step{len(self.lowers)}",
            rootfs=self.mode, executor=self.executor, as_upper=True,
            on_output=lambda _stream, line: self.output.append(line))
        assert result.rootfs_mode is self.mode
        self.lowers = [result.changes, *self.lowers]
        return result.changes


@pytest.fixture(params=MODES, ids=lambda m: m.value)
def steps(request: pytest.FixtureRequest, base_root: Path, tmp_path: Path,
          executor: Executor) -> Steps:
    s = Steps(base_root, tmp_path, executor, request.param)
    s.run(FIRST)
    return s


def _kinds(cs: Changeset) -> dict[str, tuple[EntryKind, str]]:
    return {e.path: (e.kind, e.link) for e in cs.entries}


def _inode(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("command, check", [
    ("echo b >> /data/f1", lambda st, data: data == b"a\nb\n"),
    ("echo b >> /data/sub/f2", lambda st, data: data == b"a\nb\n"),
    ("chown 1:2 /data/sub/f2", lambda st, data: (st.st_uid, st.st_gid) == (1, 2)),
    ("chmod 600 /data/f1", lambda st, data: st.st_mode & 0o7777 == 0o600),
], ids=["append", "append-other-name", "chown", "chmod"])
def test_a_change_through_one_name_shows_under_every_name(
        steps: Steps, command: str, check) -> None:  # type: ignore[no-untyped-def]
    upper = steps.run(f"{command} && cat /data/sub/f2 && stat -c %h /data/f1")
    assert steps.output[-1] == "2"  # still one file with two names inside the step
    for name in ("data/f1", "data/sub/f2"):
        assert check(os.lstat(upper / name), (upper / name).read_bytes()), name
    assert _inode(upper / "data/f1") == _inode(upper / "data/sub/f2")
    kinds = _kinds(changeset_from_upper(upper))
    assert kinds["data/f1"] == (EntryKind.FILE, "")
    assert kinds["data/sub/f2"] == (EntryKind.HARDLINK, "data/f1")
    assert "data/g1" not in kinds  # other groups are left alone


def test_both_names_changed_in_one_step_stay_one_file(steps: Steps) -> None:
    upper = steps.run("chmod 640 /data/g1 && echo two >> /data/g2 && cat /data/g3")
    assert steps.output == ["one", "two"]
    assert _inode(upper / "data/g1") == _inode(upper / "data/g2") == _inode(upper / "data/g3")
    assert (upper / "data/g3").read_text() == "one\ntwo\n"
    assert os.lstat(upper / "data/g3").st_mode & 0o777 == 0o640


def test_a_name_deleted_in_an_earlier_step_stays_deleted(steps: Steps) -> None:
    steps.run("rm /data/g2")
    upper = steps.run("echo two >> /data/g3")
    kinds = _kinds(changeset_from_upper(upper))
    assert kinds["data/g1"] == (EntryKind.FILE, "")
    assert kinds["data/g3"] == (EntryKind.HARDLINK, "data/g1")
    assert "data/g2" not in kinds
    assert (upper / "data/g1").read_text() == "one\ntwo\n"


def test_a_name_removed_by_the_same_step_is_not_brought_back(steps: Steps) -> None:
    upper = steps.run("rm -r /data/sub && echo b >> /data/f1")
    cs = changeset_from_upper(upper)
    assert _kinds(cs)["data/f1"] == (EntryKind.FILE, "")
    assert "data/sub" in {w.path for w in cs.whiteouts}
    assert not (upper / "data/sub").is_dir()


def test_a_replaced_file_breaks_the_link_as_in_docker(steps: Steps) -> None:
    # sed -i and most editors write a new file and rename it over the name.
    upper = steps.run("echo new > /data/f1.tmp && mv /data/f1.tmp /data/f1")
    kinds = _kinds(changeset_from_upper(upper))
    assert kinds["data/f1"] == (EntryKind.FILE, "")
    assert "data/sub/f2" not in kinds
    assert (upper / "data/f1").read_text() == "new\n"


def test_overlay_parents_of_a_relinked_name_keep_the_lower_metadata(
        base_root: Path, tmp_path: Path, executor: Executor) -> None:
    steps = Steps(base_root, tmp_path, executor, RootfsMode.OVERLAY)
    first = steps.run(FIRST + " && chmod 750 /data/sub && chown 3:4 /data/sub "
                      "&& touch -d @1000000000 /data/sub /data")
    upper = steps.run("echo b >> /data/f1")
    for name in ("data", "data/sub"):
        below, now = os.lstat(first / name), os.lstat(upper / name)
        assert (now.st_mode, now.st_uid, now.st_gid, now.st_mtime_ns) == (
            below.st_mode, below.st_uid, below.st_gid, below.st_mtime_ns), name
    assert sorted(os.listdir(upper / "data")) == ["f1", "sub"]


def test_a_lower_still_used_as_an_upper_elsewhere_falls_back_to_index_off(
        run: Runner, base_root: Path, tmp_path: Path) -> None:
    """overlayfs refuses (EBUSY) an index=on mount whose lower dir is another mounted
    overlay's upper dir; the step then runs with index=off instead of failing."""
    layer, work, merged = tmp_path / "layer", tmp_path / "work", tmp_path / "merged"
    for d in (layer, work, merged, tmp_path / "empty"):
        d.mkdir()
    (layer / "from-layer.txt").write_text("here\n")
    opts = f"lowerdir={tmp_path / 'empty'},upperdir={layer},workdir={work}"
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t overlay overlay -o {opts} {merged} && echo mounted && exec sleep 60"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "mounted\n"
        step = run("cat /from-layer.txt && echo b >> /etc/passwd", lowers=[layer, base_root],
                   rootfs=RootfsMode.OVERLAY)
        assert step.stdout == ["here"]
        assert (step.changes / "etc/passwd").read_text().endswith("b\n")
    finally:
        holder.kill()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_renamed_name_keeps_its_group(steps: Steps) -> None:
    upper = steps.run("mv /data/f1 /data/f9 && echo b >> /data/f9 && cat /data/sub/f2")
    assert steps.output == ["a", "b"]
    cs = changeset_from_upper(upper)
    kinds = _kinds(cs)
    assert kinds["data/f9"] == (EntryKind.FILE, "")
    assert kinds["data/sub/f2"] == (EntryKind.HARDLINK, "data/f9")
    assert "data/f1" in {w.path for w in cs.whiteouts}
    assert (upper / "data/sub/f2").read_text() == "a\nb\n"


def test_the_upper_dir_is_searched_for_groups_only_after_a_linked_file_was_copied_up(
        base_root: Path, tmp_path: Path, executor: Executor,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """overlayfs' index holds an entry only for a copy-up of a file with several names: a
    step that copied none up skips the repair's walk of its upper dir."""
    import builder.sandbox.runner as runner

    searched: list[Path] = []
    real = runner.relink_copied_up
    monkeypatch.setattr(runner, "relink_copied_up",
                        lambda upper, lowers: searched.append(upper) or real(upper, lowers))
    s = Steps(base_root, tmp_path, executor, RootfsMode.OVERLAY)
    s.run(FIRST)  # new links, nothing copied up
    s.run("echo b >> /etc/passwd && mkdir /new && echo x > /new/x")  # one name only
    assert searched == []
    upper = s.run("echo c >> /data/f1")  # a copy-up of a file with two names
    # Without index=on (no file handles here) nothing is ever searched: the snapshot
    # differ keeps the groups instead (rootfs=auto picks it when the lowers have some).
    assert len(searched) == (1 if runner.overlay_index_supported(tmp_path) else 0)
    if searched:
        assert _inode(upper / "data/f1") == _inode(upper / "data/sub/f2")
