"""``--build-context NAME=DIR|docker-image://REF|oci-layout://DIR[@DIGEST]``: named contexts
standing in for stages and images in FROM, COPY --from and RUN --mount=from (real builds)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from builder.build_cmd import build as build_command
from builder.contexts import context_key


def _cli(ctx: Path, storage: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(build_command, ["--progress", "plain", *args, "--storage",
                                              str(storage), str(ctx)])


def _tools(ctx: Path, storage: Path, busybox_ref: str, tmp_path: Path) -> str:
    """The tools image: tagged example.com/tools:1 in ``storage``, and written to an OCI
    layout; returns the layout's ``oci-layout://DIR@DIGEST``."""
    tools = ctx / "tools"
    (tools / "Dockerfile").write_text((tools / "Dockerfile").read_text().replace("BASE",
                                                                                busybox_ref))
    layout = tmp_path / "tools-layout"
    done = _cli(tools, storage, "-t", "example.com/tools:1",
                "-o", f"type=oci,dest={layout},tar=false")
    assert done.exit_code == 0, done.output
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    return f"oci-layout://{layout}@{digest}"


def test_names_match_as_buildkit_matches_them() -> None:
    assert context_key("alpine") == context_key("alpine:latest") \
        == context_key("docker.io/library/alpine") == "alpine"
    assert context_key("alpine:3.19") == "alpine:3.19"
    assert context_key("example.com/tools:1") == "example.com/tools:1"
    assert context_key("Base") == "base"


def test_directory_and_image_contexts(context_of, busybox_ref: str, tmp_path: Path) -> None:
    ctx = context_of("build-context")
    storage = tmp_path / "s"
    _tools(ctx, storage, busybox_ref, tmp_path)
    out = tmp_path / "out"
    # the tools image is not pulled: a local directory stands in for it (FROM-less use)
    tool_dir = tmp_path / "tool-dir"
    tool_dir.mkdir()
    (tool_dir / "tool.txt").write_text("from-a-directory\n")
    done = _cli(ctx, storage, "--build-context", f"project={ctx / 'project'}",
                "--build-context", f"example.com/tools:1={tool_dir}", "-o", str(out))
    assert done.exit_code == 0, done.output
    # the directory's own .dockerignore applies (and, as in a build context, is sent)
    assert sorted(p.name for p in (out / "project").iterdir()) == [".dockerignore",
                                                                   "notes.txt"]
    assert (out / "mounted.txt").read_text() == "project notes\n"
    assert (out / "tool.txt").read_text() == "from-a-directory\n"
    assert (out / "which.txt").read_text() == "from-the-stage\n"
    # an image context, by docker-image:// (from the local store)
    out2 = tmp_path / "out2"
    done = _cli(ctx, storage, "--build-context", f"project={ctx / 'project'}",
                "--build-context", "example.com/tools:1=docker-image://example.com/tools:1",
                "-o", str(out2))
    assert done.exit_code == 0, done.output
    assert (out2 / "tool.txt").read_text() == "from-the-tools-image\n"
    # a changed directory is seen (its files are part of the steps' keys)
    (ctx / "project/notes.txt").write_text("changed notes\n")
    out3 = tmp_path / "out3"
    done = _cli(ctx, storage, "--build-context", f"project={ctx / 'project'}",
                "--build-context", f"example.com/tools:1={tool_dir}", "-o", str(out3))
    assert done.exit_code == 0, done.output
    assert (out3 / "project/notes.txt").read_text() == "changed notes\n"
    assert (out3 / "mounted.txt").read_text() == "changed notes\n"


def test_a_context_replaces_a_stage(context_of, busybox_ref: str, tmp_path: Path) -> None:
    ctx = context_of("build-context")
    storage = tmp_path / "s"
    layout_ref = _tools(ctx, storage, busybox_ref, tmp_path)
    out = tmp_path / "out"
    done = _cli(ctx, storage, "--build-context", f"base={layout_ref}",
                "--build-context", f"project={ctx / 'project'}",
                "--build-context", "example.com/tools:1=docker-image://example.com/tools:1",
                "-o", str(out))
    assert done.exit_code == 0, done.output
    assert (out / "which.txt").read_text() == "from-the-tools-image\n"
    assert "from-the-stage" not in done.output and "echo from-the-stage" not in done.output
    assert f"[context base] {layout_ref}" in done.output


def test_a_context_stands_in_for_a_base_image(context_of, busybox_ref: str,
                                              tmp_path: Path) -> None:
    ctx = context_of("build-context")
    storage = tmp_path / "s"
    _tools(ctx, storage, busybox_ref, tmp_path)
    out = tmp_path / "out"
    done = _cli(ctx, storage, "-f", str(ctx / "Dockerfile.from-image"), "--build-context",
                "alpine:3.19=docker-image://example.com/tools:1", "-o", str(out))
    assert done.exit_code == 0, done.output
    assert (out / "seen.txt").read_text() == "from-the-tools-image\n"
    assert (out / "mounted.txt").read_text() == "from-the-tools-image\n"


def test_from_a_directory_context(context_of, tmp_path: Path) -> None:
    ctx = context_of("build-context")
    out = tmp_path / "out"
    done = _cli(ctx, tmp_path / "s", "-f", str(ctx / "Dockerfile.from-dir"),
                "--build-context", f"project={ctx / 'project'}", "-o", str(out))
    assert done.exit_code == 0, done.output
    # the files of the directory that its .dockerignore leaves, as one layer
    assert sorted(p.name for p in out.iterdir()) == [".dockerignore", "extra.txt", "notes.txt"]


def test_bad_values_say_what_to_write(context_of, tmp_path: Path) -> None:
    ctx = context_of("build-context")
    for value, message in (("project", "expected NAME=DIR"),
                           (f"project={tmp_path}/none", "is not a directory"),
                           ("project=https://example.com/x.git", "only a local directory"),
                           (f"base=oci-layout://{tmp_path}/none", "not an OCI image layout"),
                           ("base=docker-image://bad ref!", "docker-image://bad ref!")):
        bad = _cli(ctx, tmp_path / "s", "--build-context", value)
        assert bad.exit_code == 2 and message in bad.output, bad.output
        assert "Traceback" not in bad.output
    # a context image that cannot be had fails the build at the FROM it replaces
    bad = _cli(ctx, tmp_path / "s", "--build-context",
               f"base=oci-layout://{tmp_path}:nosuchtag")
    assert bad.exit_code == 1, bad.output
    assert bad.output.strip().splitlines()[-1].startswith(
        f"ERROR: Dockerfile:3: FROM: --build-context base=oci-layout://{tmp_path}:nosuchtag: ")
