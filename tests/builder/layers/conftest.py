"""Fixtures for the layer tests (helpers live in layer_helpers.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from layer_helpers import Overlay, make_sample_tree


@pytest.fixture
def sample_tree(tmp_path: Path) -> Path:
    root = tmp_path / "sample"
    make_sample_tree(root)
    return root


@pytest.fixture
def overlay(tmp_path: Path) -> Iterator[object]:
    """A factory: ``overlay(lower, options="")`` mounts and later unmounts an overlay."""
    mounts: list[Overlay] = []

    def make(lower: Path, options: str = "") -> Overlay:
        if os.geteuid() != 0:
            if os.environ.get("CI"):
                pytest.fail("overlay tests need root in CI")
            pytest.skip("overlay tests need root")
        ov = Overlay(tmp_path / f"ov{len(mounts)}", lower, options)
        mounts.append(ov)
        return ov

    yield make
    for ov in mounts:
        ov.unmount()
