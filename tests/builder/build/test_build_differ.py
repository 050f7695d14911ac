"""``--differ``: overlayfs and the snapshot differ give the same layers (testfiles/differ)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.layers import changeset_from_upper
from builder.sandbox import Executor, RootfsMode, RunSpec, run_step, runner
from builder.sandbox.differ import upper_from_copy
from builder.steps.common import BuildError
from testkit.rootfs import make_busybox_rootfs
from tests.helpers.sandbox_steps import PATH, require_root


@pytest.mark.slow
def test_overlay_and_snapshot_give_the_same_image(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("differ")
    digests = {}
    for differ in ("overlay", "snapshot"):
        out = tmp_path / f"out-{differ}"
        result = build(ctx, storage=tmp_path / f"storage-{differ}", local=out,
                       source_date_epoch=1700000000, differ=differ)
        digests[differ] = result.image.digest
        assert (out / "opt/work/here/made.txt").read_text() == "in-workdir\n"
        assert not (out / "bin/vi").exists() and not (out / "srv/old").exists()
        assert (out / "srv/data/sub").read_text() == "file\n"
        assert os.listdir(out / "home/tester") == ["new"]
        assert (out / "tmp/uid.txt").read_text() == "1000\n"
        assert out.stat().st_mode & 0o777 == 0o755
    assert digests["overlay"] == digests["snapshot"]


def test_auto_uses_the_snapshot_differ_where_overlayfs_cannot_mount(
        context_of, build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "overlay_supported", lambda _dir: False)
    diffs: list[Path] = []

    def spy(before: object, root: Path, upper: Path) -> None:
        diffs.append(root)
        upper_from_copy(before, root, upper)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "upper_from_copy", spy)
    out = tmp_path / "out"
    ctx = context_of("differ")
    build(ctx, local=out, differ="auto")
    assert len(diffs) == 4  # every RUN went through the snapshot differ
    assert (out / "opt/work/here/made.txt").read_text() == "in-workdir\n"
    assert not (out / "bin/vi").exists()
    with pytest.raises(BuildError, match="--differ auto or --differ snapshot"):
        build(ctx, storage=tmp_path / "s2", differ="overlay")


def _describe(upper: Path) -> list[tuple[object, ...]]:
    cs = changeset_from_upper(upper)
    return [(e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.link, e.xattrs)
            for e in cs.entries] + [(w.path, w.opaque) for w in cs.whiteouts]


@pytest.mark.parametrize("executor", [Executor.BWRAP, Executor.CHROOT], ids=lambda e: e.value)
def test_the_differ_writes_what_overlayfs_writes(tmp_path: Path, executor: Executor) -> None:
    require_root()
    base = make_busybox_rootfs(tmp_path / "base")
    script = ("rm /etc/group; echo x >> /etc/passwd; mkdir -p /a/b; echo hi > /a/b/f; "
              "ln /a/b/f /a/h; ln -s b /a/s; chmod 700 /home; rm -rf /home/tester; "
              "mkdir /home/tester2; mkfifo /a/p; setfattr -n user.k -v v /a/b/f 2>/dev/null;"
              "true")
    spec = RunSpec(argv=("/bin/sh", "-c", script), env=(PATH,), workdir="/w/d",
                   mounts=(), secrets={})
    got = {}
    for mode in (RootfsMode.OVERLAY, RootfsMode.COPY):
        result = run_step(spec, lowers=[base], state_dir=tmp_path / mode.value,
                          rootfs=mode, executor=executor, as_upper=True)
        assert result.changes.name == "upper"
        assert sorted(p.name for p in result.changes.parent.iterdir()) == ["upper"]
        got[mode] = _describe(result.changes)
    assert got[RootfsMode.OVERLAY] == got[RootfsMode.COPY]
    paths = [d[0] for d in got[RootfsMode.COPY]]
    assert "etc/group" in paths and "a/b/f" in paths and "w/d" in paths
    assert "proc" not in paths and "dev" not in paths
