"""``cas`` exports every name it lists, each from the module that defines it."""

import importlib

import cas


def test_every_export_resolves_from_its_module() -> None:
    where = cas._WHERE  # type: ignore[attr-defined]
    assert sorted(where) == sorted(cas.__all__)
    for name, module in where.items():
        mod = importlib.import_module(f"cas.{module}")
        assert name in mod.__all__, f"cas.{module} does not export {name}"
        assert getattr(cas, name) is getattr(mod, name)
