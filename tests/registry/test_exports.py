"""Every registry module declares ``__all__``, and every name in it exists; the registry
imports nothing from the builder (dependencies point builder -> registry -> cas)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import registry

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(registry.__path__, "registry.") if not m.ispkg
)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_declared_and_complete(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for export in module.__all__:
        assert hasattr(module, export), f"{name}.__all__ lists missing {export!r}"


def test_registry_does_not_import_the_builder():
    root = Path(registry.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                assert not node.module.startswith("builder"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("builder") for a in node.names), path
