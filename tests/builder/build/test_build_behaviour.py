"""Cache, reproducibility, multi-stage, .dockerignore, hostile contexts, failing RUN."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from builder.steps.common import BuildError
from testkit.rootfs import make_busybox_rootfs
from tests.builder.build.conftest import write_base_layout


def test_rebuild_is_fully_cached_and_one_change_rebuilds_from_there(context_of, build,
                                                                    tmp_path: Path) -> None:
    ctx = context_of("basic")
    storage = tmp_path / "s"
    first = build(ctx, storage=storage, source_date_epoch=0)
    assert first.cached_steps == ()
    second = build(ctx, storage=storage, source_date_epoch=0)
    assert second.image.digest == first.image.digest
    assert len(second.cached_steps) == 4 and second.ran_steps[1:] == ()
    (ctx / "dir/a.txt").write_text("changed\n")
    third = build(ctx, storage=storage, source_date_epoch=0, explain=True)
    # (the Dockerfile's steps: not the rewriting of the new layers for the epoch)
    ran = [s for s in third.ran_steps if "] " in s and "FROM" not in s]
    assert [s.split("] ", 1)[1] for s in ran] == [
        "COPY dir/ /opt/dir/",
        'RUN echo "$GREETING from run" > /app/run.txt && rm -f /etc/hostname']
    assert third.image.digest != first.image.digest
    fourth = build(ctx, storage=storage, source_date_epoch=0, no_cache=True)
    assert fourth.cached_steps == ()
    assert fourth.image.digest == third.image.digest


def test_steps_cached_by_a_release_that_made_them_otherwise_run_again(
        context_of, build, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A release that changes what a step makes of the same inputs raises STEP_SEMANTICS:
    what earlier releases cached is not reused (it was made the old way), and the new
    entries are."""
    from builder.cache import entries

    ctx = context_of("basic")
    storage = tmp_path / "s"
    first = build(ctx, storage=storage, source_date_epoch=0)
    monkeypatch.setattr(entries, "STEP_SEMANTICS", entries.STEP_SEMANTICS + 1)
    upgraded = build(ctx, storage=storage, source_date_epoch=0)
    assert [s for s in upgraded.cached_steps if "FROM" not in s] == []
    assert len([s for s in upgraded.ran_steps if "] " in s and "FROM" not in s]) == 4
    assert upgraded.image.digest == first.image.digest  # the same steps, made again
    again = build(ctx, storage=storage, source_date_epoch=0)
    assert len(again.cached_steps) == 4


def test_reproducible_digest_with_fresh_storage(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("basic")
    a = build(ctx, storage=tmp_path / "a", source_date_epoch=1234)
    b = build(ctx, storage=tmp_path / "b", source_date_epoch=1234)
    assert a.image.digest == b.image.digest
    assert a.image.config_bytes == b.image.config_bytes


def test_build_arg_changes_run_key(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("basic")
    out = tmp_path / "out"
    build(ctx, storage=tmp_path / "s", build_args={"GREETING": "howdy"}, local=out)
    assert (out / "app/run.txt").read_text() == "howdy from run\n"


def test_multistage_skips_unneeded_stage(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(context_of("multistage"), local=out)
    assert (out / "one.txt").read_text() == "one\n"
    assert (out / "two/two.txt").read_text() == "two\n"
    assert (out / "bin/busybox").is_file()
    assert not any("exit 7" in s for s in result.ran_steps)
    assert result.image.config.rootfs.diff_ids and len(result.image.manifest.layers) == 3


def test_copy_from_of_a_file_copies_that_file_not_the_stage(context_of, build, tmp_path: Path,
                                                            monkeypatch) -> None:
    """`COPY --from=build /go/bin/app /` (and a bind mount of one file from a stage)
    flattens only the file and the directories on its way, not the stage's whole root (a
    Debian builder stage: seconds per COPY)."""
    import builder.sandbox.flatten as flatten

    whole: list[Path] = []
    real = flatten.flatten_lowers
    monkeypatch.setattr(flatten, "flatten_lowers", lambda lowers, dest: (
        whole.append(dest), real(lowers, dest))[1])
    out = tmp_path / "out"
    ctx = context_of("multistage")
    with (ctx / "Dockerfile").open("a") as f:  # two paths at once: both, and only they
        f.write("COPY --from=one /one.txt /bin/busybox /multi/\n"
                "RUN --mount=type=bind,from=two,source=/two.txt,target=/m/two.txt "
                '["/bin/busybox", "cp", "/m/two.txt", "/bound.txt"]\n')
    build(ctx, local=out)
    assert (out / "one.txt").read_text() == "one\n"
    assert (out / "two/two.txt").read_text() == "two\n"
    assert os.access(out / "bin/busybox", os.X_OK)
    assert sorted(p.name for p in (out / "multi").iterdir()) == ["busybox", "one.txt"]
    assert (out / "bound.txt").read_text() == "two\n"  # a bind of one file: that file
    # /one.txt, /two.txt and /bin/busybox: each flattened alone (the local output is the
    # image flattened: not a stage's root)
    assert [d for d in whole if d.parent.name.startswith("root-")] == []


def test_target_builds_only_that_stage(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(context_of("multistage"), local=out, target="two")
    assert (out / "two.txt").exists() and not (out / "one.txt").exists()


def test_dockerignore(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(context_of("ignore"), local=out)
    got = sorted(str(p.relative_to(out / "ctx")) for p in (out / "ctx").rglob("*"))
    assert got == [".dockerignore", "Dockerfile", "d", "d/f", "keep.log"]


@pytest.mark.parametrize("case, message", [
    ("hostile-parent", "outside the build context"),
    ("hostile-symlink", "a symlink to '/etc/passwd', which is looked up inside the build context"),
    ("missing-source", "'nope.txt' not found in the build context"),
])
def test_hostile_contexts_fail_cleanly(context_of, build, tmp_path: Path, case: str,
                                       message: str) -> None:
    with pytest.raises(BuildError) as info:
        build(context_of(case))
    assert "Dockerfile:2:" in str(info.value)
    assert message in str(info.value)
    assert not Path("/escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()


def test_a_hostile_archive_lands_inside_the_destination(context_of, build,
                                                         tmp_path: Path) -> None:
    """As Docker's untar, chrooted at the destination: the archive's ../../escaped.txt is
    /x/escaped.txt, and nothing is written outside the image."""
    out = tmp_path / "out"
    build(context_of("hostile-archive"), local=out)
    assert (out / "x/escaped.txt").read_bytes() == b"pwned"
    assert not (out / "escaped.txt").exists()
    assert not Path("/escaped.txt").exists()
    assert not (tmp_path / "escaped.txt").exists()


def test_context_symlinks_resolve_inside_the_context(build, tmp_path: Path) -> None:
    # BuildKit resolves a context symlink in its copy of the context: an absolute target
    # starts at the context's root and '..' stops there (pybuild refused both).
    context = tmp_path / "ctx"
    (context / "realdir").mkdir(parents=True)
    (context / "realdir" / "r.txt").write_text("r\n")
    (context / "abslink").symlink_to("/realdir")
    (context / "absfile").symlink_to("/realdir/r.txt")
    (context / "dotdot").symlink_to("../../realdir")
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY abslink /abs/\nCOPY absfile /absfile.txt\n"
        "COPY dotdot/r.txt /dotdot.txt\nCOPY abs* /globbed/\n")
    out = tmp_path / "out"
    build(context, local=out)
    assert (out / "abs/r.txt").read_text() == "r\n"
    assert (out / "absfile.txt").read_text() == "r\n"
    assert (out / "dotdot.txt").read_text() == "r\n"
    assert sorted(p.name for p in (out / "globbed").iterdir()) == ["absfile", "r.txt"]


def test_failing_run_reports_exit_code_and_output(context_of, build) -> None:
    with pytest.raises(BuildError) as info:
        build(context_of("failing-run"))
    assert info.value.exit_code == 3
    assert "exit code 3" in str(info.value)
    assert "before-failure" in str(info.value)
    assert "Dockerfile:2: RUN" in str(info.value)


@pytest.mark.slow
def test_independent_stages_build_concurrently(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(context_of("concurrent"), local=out)
    times = {s: (int((out / s / "start").read_text()), int((out / s / "end").read_text()))
             for s in ("a", "b")}
    assert max(t[0] for t in times.values()) < min(t[1] for t in times.values()), times
    # COPY --from an image (not a stage) reads that image's root
    assert (out / "from-image/busybox").stat().st_size > 100_000


def test_equal_steps_in_two_stages_run_once(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(context_of("shared-step"), local=out)
    assert (out / "x").read_text() == (out / "y").read_text() == "same\n"
    runs = [s for s in result.ran_steps if "RUN echo same" in s]
    assert len(runs) == 1 and len([s for s in result.cached_steps if "RUN" in s]) == 1


def test_destinations_through_symlinked_directories(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(context_of("symlinked-dest"), local=out)
    assert (out / "lib2").is_symlink() and os.readlink(out / "lib2") == "usr/lib2"
    assert (out / "abs").is_symlink()
    assert (out / "usr/lib2/greeting.txt").read_text() == "hi\n"
    assert (out / "usr/lib2/sub/copied.txt").read_text() == "hi\n"
    assert (out / "usr/lib2/work").is_dir()
    assert os.readlink(out / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert (out / "usr/share/zoneinfo/UTC").read_text() == "hi\n"
    assert os.readlink(out / "links/dangling") == "/nowhere"
    assert (out / "nowhere").read_text() == "hi\n"
    assert not (out / "links/greeting.txt").is_symlink()
    assert (out / "links/target").read_text() == "old\n"


def test_cached_rebuild_without_epoch_is_the_same_image(context_of, build, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from cas import Store

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = context_of("basic")
    storage = tmp_path / "s"
    first = build(ctx, storage=storage, tags=("local/same:1",))
    time.sleep(1.1)  # a later build time must not leak into the image
    puts: list[object] = []
    real_put = Store.put

    async def counted(self: Store, data: bytes, **kw: object) -> object:
        puts.append(data)
        return await real_put(self, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "put", counted)
    second = build(ctx, storage=storage, tags=("local/same:1",))
    assert len(second.cached_steps) == 4
    assert second.image.digest == first.image.digest
    assert second.image.config_bytes == first.image.config_bytes
    assert puts == []  # config, manifest and tag were all there already

    history = first.image.config.history or ()
    ours = [h for h in history if h.comment == "buildkit.dockerfile.v0"]
    assert ours and all(h.created for h in ours)
    # metadata steps take the times of the filesystem steps around them
    layer_times = {h.created for h in ours if not h.empty_layer}
    assert {h.created for h in ours} <= layer_times
    assert first.image.config.created == ours[-1].created

    (ctx / "dir/a.txt").write_text("changed\n")
    third = build(ctx, storage=storage, tags=("local/same:1",))
    assert third.image.digest != first.image.digest
    assert puts  # the new image was stored


def test_a_context_link_to_an_excluded_file_finds_nothing(build, tmp_path: Path) -> None:
    # BuildKit's copy of the context holds nothing .dockerignore excludes, whatever link
    # leads there (pybuild followed the link to the file on disk).
    context = tmp_path / "ctx"
    (context / "hidden" / "keep").mkdir(parents=True)
    (context / "hidden" / "f.txt").write_text("secret\n")
    (context / "hidden" / "keep" / "k.txt").write_text("kept\n")
    (context / "hidden" / "keep" / "drop.log").write_text("dropped\n")
    (context / "link").symlink_to("hidden/f.txt")
    (context / "dirlink").symlink_to("hidden")
    (context / "keeplink").symlink_to("hidden/keep")
    (context / ".dockerignore").write_text("hidden\n!hidden/keep\n**/*.log\n")
    for line in ("COPY link /copied", "COPY dirlink/f.txt /copied"):
        (context / "Dockerfile").write_text(f"FROM scratch\n{line}\n")
        with pytest.raises(BuildError, match="not found in the build context"):
            build(context)
    (context / "Dockerfile").write_text("FROM scratch\nCOPY keeplink /kept/\n")
    out = tmp_path / "out"
    build(context, local=out)
    assert sorted(p.name for p in (out / "kept").iterdir()) == ["k.txt"]


def test_a_step_that_nests_deeper_than_the_machine_can_name_fails_at_its_line(
        build, busybox_ref: str, tmp_path: Path) -> None:
    ctx = tmp_path / "deep"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {busybox_ref}\n"
        "RUN mkdir /deep && cd /deep && i=0; while [ $i -lt 1000 ]; do mkdir abcd && cd abcd"
        " || break; i=$((i+1)); done; true\n")
    with pytest.raises(BuildError, match=r"^Dockerfile:2: RUN: a path the step made is too long"):
        build(ctx)


@pytest.mark.parametrize("line", ["COPY --from=buildr /x /x",
                                  "RUN --mount=type=bind,from=buildr,target=/m true"])
def test_a_misspelt_stage_fails_at_its_line_naming_the_stage(build, tmp_path: Path, line: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A name that is no stage is read as an image (as BuildKit does); when that fails,
    the error names the instruction that reads it and the stage it most likely meant."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")  # no image is reachable
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch AS builder\nLABEL built=1\n\nFROM scratch\n"
                                    f"LABEL before=1\n{line}\n")
    keyword = line.split()[0]
    with pytest.raises(BuildError, match=rf"^Dockerfile:6: {keyword}: pulling docker.io/library/"
                       r"buildr:latest: .*no stage is named 'buildr' \(did you mean builder\?\)"):
        build(ctx)


def test_a_base_env_entry_without_value_or_given_twice_runs_as_buildkit_runs_it(
        build, busybox_ref: str, tmp_path: Path) -> None:
    """An image config's Env may hold ``NAME`` without ``=`` and a name twice (Docker
    writes neither, other tools do): RUN gets ``NAME=`` and the last value, one entry a
    name, as under BuildKit; the image's Env is kept as it was."""
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    base = write_base_layout(rootfs, tmp_path / "odd-env", env=(
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NOEQUALS", "DUP=1", "DUP=2", "EMPTY="))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base}\nRUN env | sort > /env.txt\n")
    out = tmp_path / "out"
    result = build(ctx, local=out)
    lines = (out / "env.txt").read_text().splitlines()
    assert [line for line in lines if line.startswith(("NOEQUALS", "DUP", "EMPTY"))] == [
        "DUP=2", "EMPTY=", "NOEQUALS="]
    assert result.image.config.config.env == (
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "NOEQUALS", "DUP=1", "DUP=2", "EMPTY=")


def test_a_base_with_a_relative_working_dir_runs_from_the_root(
        build, busybox_ref: str, tmp_path: Path) -> None:
    """A base config's WorkingDir without a leading ``/`` (Docker never writes one, other
    tools may) is taken from ``/``, as BuildKit's state takes it: RUN starts there (made,
    as the step's user's, when missing), COPY's relative destinations and a relative
    WORKDIR start from it."""
    rootfs = make_busybox_rootfs(tmp_path / "rootfs")
    base = write_base_layout(rootfs, tmp_path / "rel-wd", WorkingDir="rel/dir", User="1000")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("f\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {base}\nRUN pwd > /tmp/pwd.txt\nCOPY f.txt copied.txt\nWORKDIR sub\n"
        "RUN pwd >> /tmp/pwd.txt\n")
    out = tmp_path / "out"
    result = build(ctx, local=out)
    assert (out / "tmp/pwd.txt").read_text() == "/rel/dir\n/rel/dir/sub\n"
    assert (out / "rel/dir/copied.txt").read_text() == "f\n"
    assert (out / "rel/dir").stat().st_uid == 1000
    assert result.image.config.config.working_dir == "/rel/dir/sub"


@pytest.mark.parametrize("run, fix", [
    ("RUN echo hi", r"/bin/sh does not exist in the image: the shell form of RUN runs it .*"
                    r"use the exec form"),
    ('RUN ["/bin/true"]', r"/bin/true does not exist in the image: use a base image that has it"),
])
def test_a_run_whose_program_the_image_lacks_says_so_and_how_to_fix_it(
        build, tmp_path: Path, run: str, fix: str) -> None:
    """``FROM scratch`` then ``RUN``: the step fails at its line with exit code 127, and
    the error names the missing program and the fix (BuildKit names only the program)."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM scratch\nCOPY Dockerfile /\n{run}\n")
    with pytest.raises(BuildError, match=r"^Dockerfile:3: RUN: .*exit code 127") as failed:
        build(ctx)
    assert failed.value.exit_code == 127
    assert re.search(fix, str(failed.value)), str(failed.value)
