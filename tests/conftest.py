"""Shared test set-up: subprocesses run this checkout's code, not an installed copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
# `testkit`, `tests.helpers` and this checkout's packages import however pytest was started.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

import testkit.tools  # noqa: E402 - needs the checkout on sys.path (above)


def _skip_or_fail(message: str) -> NoReturn:
    """A missing tool skips the test locally and fails it in CI (see testkit.tools)."""
    if testkit.tools.in_ci():
        pytest.fail(f"{message}. CI is set, so a missing tool is an error, not a skip.")
    pytest.skip(message)


testkit.tools.on_missing = _skip_or_fail
