"""``RUN --mount=type=bind`` of files and directories (testfiles/bind-file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.steps.common import BuildError


@pytest.mark.parametrize("differ", ["overlay", "snapshot"])
def test_single_file_bind_mounts(context_of, build, tmp_path: Path,
                                 differ: str) -> None:  # type: ignore[no-untyped-def]
    ctx = context_of("bind-file")
    out = tmp_path / "out"
    build(ctx, local=out, differ=differ)
    assert (out / "reqs-copy.txt").read_text() == "flask==3.0\nrequests==2.31\n"
    assert (out / "ro.txt").read_text() == "read-only\n"
    assert (out / "tool-out.txt").read_text() == "built by a stage\n"
    assert (out / "both.txt").read_text() == "setting=1\nflask==3.0\nrequests==2.31\nmore\n"
    assert (ctx / "requirements.txt").read_text() == "flask==3.0\nrequests==2.31\n"
    # mount points (and the directories made for them) stay out of the image
    assert not (out / "tmp/requirements.txt").exists()
    assert not (out / "opt").exists()
    assert not (out / "etc/app").exists() and not (out / "srv/extra.txt").exists()


def test_file_bind_onto_an_image_directory_names_the_problem(
        context_of, build, busybox_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = context_of("bind-file")
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\n"
        "RUN --mount=type=bind,source=requirements.txt,target=/etc true\n")
    with pytest.raises(BuildError, match="cannot mount a file at /etc: the image has a "
                                         "directory there; choose another target"):
        build(ctx)
