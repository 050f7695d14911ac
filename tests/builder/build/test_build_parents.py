"""``COPY --parents`` (testfiles/parents), as the Dockerfile reference's examples."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.steps.common import BuildError


def _files(root: Path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, files in os.walk(root) for f in files)


def test_parents_pivot_and_wildcards(context_of, build, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(context_of("parents"), local=out)
    assert _files(out / "parents") == ["x/a.txt", "y/a.txt"]
    assert (out / "parents/x/a.txt").read_text() == "xa\n"
    assert (out / "parents/y/a.txt").read_text() == "ya\n"
    assert _files(out / "pivot") == ["y/a.txt", "y/b.txt"]
    assert _files(out / "glob") == ["src/a.txt", "src/x/b.txt", "src/x/y/c.txt"]
    assert _files(out / "whole") == ["dir/sub/file"]
    assert _files(out / "excl") == ["src/x/b.txt", "src/x/y/c.txt"]
    assert _files(out / "work/relative") == ["y/a.txt"]
    assert (out / "empty").is_dir() and not os.listdir(out / "empty")
    history = [h.created_by or "" for h in result.image.config.history or ()]
    assert "COPY --parents ./x/a.txt ./y/a.txt /parents/ # buildkit" in history


def test_a_missing_source_is_an_error(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("parents")
    (ctx / "Dockerfile").write_text(
        (ctx / "Dockerfile").read_text() + "COPY --parents x/missing.txt /nope/\n")
    with pytest.raises(BuildError, match="Dockerfile:11: COPY: 'x/missing.txt' not found"):
        build(ctx)


def test_parents_from_a_stage_with_absolute_sources(context_of, build, tmp_path: Path) -> None:
    ctx = context_of("parents")
    base = (ctx / "Dockerfile").read_text().split("FROM ", 1)[1].split("\n", 1)[0]
    (ctx / "Dockerfile").write_text(
        f"FROM {base} AS build\n"
        "RUN mkdir -p /app/bin/sub && echo t > /app/bin/sub/tool && echo r > /app/readme\n"
        f"FROM {base}\n"
        "COPY --from=build --parents /app/./bin/sub/tool /app/readme /out/\n")
    out = tmp_path / "out"
    build(ctx, local=out)
    assert _files(out / "out") == ["app/readme", "bin/sub/tool"]
