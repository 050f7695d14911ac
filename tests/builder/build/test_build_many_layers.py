"""Images of many layers: a RUN over 90 lowers still runs on overlayfs.

One overlay mount takes one page of options. Named by their digests, some 50 layer
directories filled it and the next RUN failed ("52 layers do not fit in one overlay
mount"), where Docker's overlay2 driver and BuildKit go on (they name layers by short
links, and Docker stops at 125 layers). pybuild gives the lowers short names too, up to the
kernel's 500; past that, ``--differ auto`` copies instead of mounting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.sandbox import RootfsMode
from builder.sandbox.errors import SandboxSetupError
from builder.sandbox.rootfs import MAX_LOWERS, overlay_mount_data
from builder.sandbox.runner import _choose_rootfs

STEPS = 90


CASE = Path(__file__).resolve().parents[2] / "e2e" / "testfiles" / "build-compare" / "many-layers"


def test_a_run_over_ninety_layers(build, busybox_ref: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(CASE, local=out, differ="overlay", build_args={"BASE": busybox_ref})
    assert len(result.image.manifest.layers) == 1 + STEPS + 1
    assert (out / "count").read_text() == f"{STEPS - 2}\n"  # /f20 and /f60 were removed
    assert (out / "picked").read_text() == "1\n39\n41\n90\n"
    assert not (out / "f20").exists() and not (out / "f60").exists()


def _dirs(root: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        d = root / "layers" / f"{i:064x}" / "root"
        d.mkdir(parents=True)
        out.append(d)
    return out


def test_long_lists_are_mounted_by_short_links(tmp_path: Path) -> None:
    lowers = _dirs(tmp_path, 400)
    state = tmp_path / "step"
    data, cwd = overlay_mount_data(lowers, state / "upper", state / "work", links=state / "l")
    assert len(data) <= 4000 and cwd == str(state)
    low = data.split("lowerdir=", 1)[1].split(",", 1)[0].split(":")
    assert [os.path.realpath(state / name) for name in low] == [str(d) for d in lowers]
    assert "upperdir=upper," in data and "workdir=work," in data
    # Without a place for the links, the list does not fit: said, with the way out.
    with pytest.raises(SandboxSetupError, match="--differ snapshot"):
        overlay_mount_data(lowers, state / "upper", state / "work")


def test_past_the_kernels_stack_auto_copies_and_overlay_says_why(tmp_path: Path) -> None:
    lowers = [tmp_path / "layers" / f"{i:064x}" for i in range(MAX_LOWERS + 1)]
    assert _choose_rootfs(RootfsMode.AUTO, tmp_path, lowers) is RootfsMode.COPY
    with pytest.raises(SandboxSetupError, match=f"at most {MAX_LOWERS}"):
        overlay_mount_data(lowers, tmp_path / "upper", tmp_path / "work", links=tmp_path / "l")
