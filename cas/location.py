"""Where the store lives when nobody says: ``PYBUILD_STORAGE``, else the XDG data dir."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_storage_dir"]


def default_storage_dir() -> Path:
    """``$PYBUILD_STORAGE``, else ``$XDG_DATA_HOME/pybuild``, else ``~/.local/share/pybuild``."""
    env = os.environ.get("PYBUILD_STORAGE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "pybuild"
