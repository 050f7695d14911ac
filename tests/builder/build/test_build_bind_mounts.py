"""``RUN --mount=type=bind`` of files and directories (testfiles/bind-file)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from builder.steps.common import BuildError

from .conftest import Builder


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


def test_bind_mount_points_leave_the_same_layers_with_both_differs(
        context_of, build, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ctx = context_of("bind-file")
    oci = {d: tmp_path / f"oci-{d}" for d in ("overlay", "snapshot")}
    digests = {d: build(ctx, storage=tmp_path / f"storage-{d}", oci=oci[d], differ=d,
                        source_date_epoch=1700000000).image.digest
               for d in ("overlay", "snapshot")}
    assert digests["overlay"] == digests["snapshot"]
    manifest = json.loads((oci["overlay"] / "blobs/sha256" / digests["overlay"].encoded)
                          .read_bytes())
    first_run = manifest["layers"][1]["digest"].split(":", 1)[1]
    with tarfile.open(oci["overlay"] / "blobs/sha256" / first_run) as tar:
        assert sorted(tar.getnames()) == ["reqs-copy.txt", "ro.txt"]


def test_bind_sources_through_links_resolve_inside_their_root(
        build, busybox_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # As BuildKit: a stage's absolute link names the stage's own file, a context link's
    # absolute target starts at the context (pybuild followed both on the build machine).
    ctx = tmp_path / "ctx"
    (ctx / "realdir").mkdir(parents=True)
    (ctx / "realdir" / "r.txt").write_text("from the context\n")
    (ctx / "abslink").symlink_to("/realdir")
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref} AS src\n"
        "RUN mkdir -p /data/real && echo 'from the stage' > /data/real/s.txt"
        " && ln -s /data/real /data/link && ln -s /data/real/s.txt /data/file-link\n"
        f"FROM {busybox_ref}\n"
        "RUN --mount=type=bind,source=abslink,target=/m cat /m/r.txt > /out.txt\n"
        "RUN --mount=type=bind,from=src,source=/data/link,target=/m cat /m/s.txt >> /out.txt\n"
        "RUN --mount=type=bind,from=src,source=/data/file-link,target=/f cat /f >> /out.txt\n")
    out = tmp_path / "out"
    build(ctx, local=out)
    assert (out / "out.txt").read_text() == ("from the context\nfrom the stage\n"
                                             "from the stage\n")


def test_a_context_bind_leaves_out_what_dockerignore_excludes(
        build, busybox_ref: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # BuildKit's copy of the context holds no excluded file, and a bind of the context
    # (RUN --mount=type=bind,target=/src) shows that copy
    ctx = tmp_path / "ctx"
    (ctx / "ignored").mkdir(parents=True)
    (ctx / "keep").mkdir()
    (ctx / "ignored" / "i.txt").write_text("i\n")
    (ctx / "keep" / "k.txt").write_text("k\n")
    (ctx / "keep" / "x.tmp").write_text("t\n")
    (ctx / ".dockerignore").write_text("ignored\n**/*.tmp\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\n"
        "RUN --mount=type=bind,target=/src find /src | sort > /bind.txt\n"
        "RUN --mount=type=bind,source=keep,target=/k,rw find /k | sort >> /bind.txt\n")
    out = tmp_path / "out"
    storage = tmp_path / "storage"
    build(ctx, local=out, storage=storage)
    assert (out / "bind.txt").read_text() == (
        "/src\n/src/.dockerignore\n/src/Dockerfile\n/src/keep\n/src/keep/k.txt\n"
        "/k\n/k/k.txt\n")
    # an excluded file is no part of the step's key either
    (ctx / "keep" / "x.tmp").write_text("changed\n")
    again = build(ctx, local=tmp_path / "out2", storage=storage)
    assert not any("RUN" in s for s in again.ran_steps)


@pytest.mark.parametrize("mount", ["type=bind,from=s,source=/nope,target=/m",
                                   "type=cache,from=s,source=nope/,target=/m"])
def test_a_from_source_the_stage_lacks_fails_at_its_line(build, tmp_path: Path,
                                                          mount: str) -> None:
    """A ``from=`` mount whose source the stage does not have fails at the RUN's line,
    naming the source and the stage (not a path of the machine that builds)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch AS s\nLABEL a=1\n\nFROM scratch\n"
                                    f"RUN --mount={mount} true\n")
    with pytest.raises(BuildError) as info:
        build(ctx)
    assert str(info.value) == ("Dockerfile:5: RUN: --mount from=s: source /nope does not "
                               "exist in s; name a path it has")


@pytest.mark.parametrize("mount", ["type=cache", "type=bind,target=/", "type=tmpfs,target=.",
                                   "type=cache,target=/app/.."])
def test_a_mount_over_the_whole_root_is_refused(build: Builder, busybox_ref: str,
                                                 tmp_path: Path, mount: str) -> None:
    """As BuildKit: a bind, cache or tmpfs mount at ``/`` (a missing or relative target is
    in the WORKDIR, here ``/``) is an error at the RUN's line, not a step that runs
    without the image's files."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nRUN --mount={mount} true\n")
    with pytest.raises(BuildError) as info:
        build(ctx)
    assert str(info.value).startswith('Dockerfile:2: RUN: invalid mount target "/": ')
    assert "give a target below /" in str(info.value)


def test_a_mount_without_target_is_at_the_workdir(build: Builder, busybox_ref: str,
                                                  tmp_path: Path) -> None:
    """As BuildKit: ``--mount=type=bind`` without a target shows the context at WORKDIR."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("from the context\n")
    (ctx / "Dockerfile").write_text(f"FROM {busybox_ref}\nWORKDIR /app\n"
                                    "RUN --mount=type=bind cat /app/hello.txt > /seen.txt\n")
    out = tmp_path / "out"
    build(ctx, local=out)
    assert (out / "seen.txt").read_text() == "from the context\n"
    assert not (out / "app/hello.txt").exists()
