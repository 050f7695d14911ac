"""Steps stacked on the changes of earlier steps: whiteouts, opaque dirs, /etc/passwd."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from builder.sandbox import Executor, RootfsMode
from builder.sandbox.flatten import flatten_lowers
from builder.sandbox.rootfs import is_opaque, lower_stat, read_from_lowers
from tests.helpers.sandbox_steps import Runner

FIRST = (
    "rm /etc/group; rm -r /home/tester; mkdir -p /home/tester; touch /home/tester/new; "
    "echo 'extra:x:2000:2001::/:/bin/sh' >> /etc/passwd; ln -s /bin/busybox /bin/extra"
)


@pytest.fixture
def first_layer(run: Runner) -> Path:
    step = run(FIRST, rootfs=RootfsMode.OVERLAY)
    assert is_opaque(step.changes / "home/tester")
    return step.changes


def test_lower_lookups_honour_whiteouts_and_opaque_dirs(
    first_layer: Path, base_root: Path
) -> None:
    lowers = [first_layer, base_root]
    assert read_from_lowers(lowers, "etc/group") is None
    assert b"extra:x:2000" in (read_from_lowers(lowers, "/etc/passwd") or b"")
    assert read_from_lowers([base_root], "etc/group") is not None
    assert lower_stat(lowers, "home/tester/new") is not None
    st = lower_stat(lowers, "bin/extra")
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert lower_stat(lowers, "etc/group/x") is None


@pytest.mark.parametrize("mode", [RootfsMode.OVERLAY, RootfsMode.COPY], ids=lambda m: m.value)
def test_second_step_sees_the_first_steps_result(
    run: Runner, first_layer: Path, base_root: Path, mode: RootfsMode
) -> None:
    step = run(
        "test -e /etc/group && echo group || echo no-group; ls -A /home/tester; id -u; id -g",
        lowers=[first_layer, base_root], rootfs=mode, user="extra",
        run_executor=Executor.AUTO,
    )
    assert step.stdout == ["no-group", "new", "2000", "2001"]


def test_flatten_applies_layers_bottom_up(
    first_layer: Path, base_root: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "flat"
    flatten_lowers([first_layer, base_root], dest)
    assert not (dest / "etc/group").exists()
    assert os.listdir(dest / "home/tester") == ["new"]
    assert os.readlink(dest / "bin/extra") == "/bin/busybox"
    assert (dest / "bin/sh").is_symlink() and os.readlink(dest / "bin/sh") == os.readlink(
        base_root / "bin/sh"
    )
    assert stat.S_IMODE(os.stat(dest / "tmp").st_mode) == 0o1777
    assert not any(
        stat.S_ISCHR(os.lstat(Path(d) / f).st_mode)
        for d, _, files in os.walk(dest) for f in files
    )


def test_account_files_are_read_through_links_inside_the_image(tmp_path: Path) -> None:
    """As runc and BuildKit read them: a linked /etc/passwd or /etc/group is the file its
    link leads to in the image (the link and its target in different layers), never a
    file of the machine that builds; a link loop or a link to nothing is no file."""
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    (top / "etc").mkdir(parents=True)
    (bottom / "data").mkdir(parents=True)
    (bottom / "data" / "passwd").write_text("app:x:7:8::/:/bin/sh\n")
    (bottom / "data" / "group").write_text("grp:x:9:\n")
    os.symlink("../data/passwd", top / "etc" / "passwd")
    os.symlink("/data/group", top / "etc" / "group")
    os.symlink("../../../../../../etc/hostname", top / "etc" / "climbs")
    os.symlink("loop", top / "etc" / "loop")
    lowers = [top, bottom]
    assert read_from_lowers(lowers, "etc/passwd") == b"app:x:7:8::/:/bin/sh\n"
    assert read_from_lowers(lowers, "/etc/group") == b"grp:x:9:\n"
    assert read_from_lowers(lowers, "etc/climbs") is None  # /etc/hostname of the image
    assert read_from_lowers(lowers, "etc/loop") is None
    assert read_from_lowers(lowers, "etc") is None
