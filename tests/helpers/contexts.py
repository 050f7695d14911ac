"""Build contexts for the builder tests: a testfiles folder copied, its base image named."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["context_with_base"]


def context_with_base(testfiles: Path, tmp_path: Path, ref: str) -> Path:
    """A copy of ``testfiles`` under ``tmp_path/ctx`` whose Dockerfiles say ``ref`` where
    they say ``BASE``."""
    ctx = tmp_path / "ctx"
    shutil.copytree(testfiles, ctx)
    for df in ctx.glob("Dockerfile*"):
        df.write_text(df.read_text().replace("BASE", ref))
    return ctx
