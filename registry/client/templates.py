"""The part of Go's ``text/template`` that ``pybuild inspect`` and ``pybuild history``
take in ``--format``, printing values as Docker's CLI prints them:

- ``{{.Field.Sub}}``: the value as Go's ``fmt`` prints it (``%v``): a string as it is,
  a list as ``[a b]``, an object as ``map[k:v ...]`` (keys sorted; an empty object inside
  one as ``{}``, Docker's ``struct{}`` of ``ExposedPorts`` and ``Volumes``), null as
  ``<nil>``, ``true``/``false``, numbers as they are;
- ``{{json .Field}}``, ``{{json .}}``: compact JSON, ``<``/``>``/``&`` not escaped
  (Docker's ``json`` function); ``--format json`` is ``{{json .}}``;
- text between, as it is.

A field an object lacks may be answered by ``fallback(path, name)`` (``path``: the names
walked to that object), which raises KeyError when it has no answer either: ``inspect``
answers Docker's names (``.Config.Env`` from the OCI config's ``config``) that way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import click

__all__ = ["FIELD", "Fallback", "Nil", "go_value", "render"]

FIELD = re.compile(r"\{\{\s*(json\s+)?\.([A-Za-z0-9_.]*)\s*\}\}")

Fallback = Callable[[tuple[str, ...], str], Any]


class Nil:
    """Go's nil of a slice, map or pointer type: ``%v`` prints ``text`` (``[]``, ``map[]``,
    ``<nil>``), ``json`` prints ``null``."""

    def __init__(self, text: str) -> None:
        self.text = text


def go_value(value: Any, *, inner: bool = False) -> str:
    """``value`` (decoded JSON) as Go's ``%v`` prints the value Docker decodes it into."""
    if isinstance(value, Nil):
        return value.text
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, list):
        return "[" + " ".join(go_value(v, inner=True) for v in value) + "]"
    if isinstance(value, dict):
        if inner and not value:
            return "{}"
        return "map[" + " ".join(f"{k}:{go_value(value[k], inner=True)}" for k in sorted(value)) + "]"
    return str(value)


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      default=lambda _nil: None)


def render(template: str, obj: Any, fallback: Fallback | None = None) -> str:
    """``obj`` through the Go-template subset in the module docstring."""
    if template == "json":
        template = "{{json .}}"

    def field(m: re.Match[str]) -> str:
        value = obj
        path: tuple[str, ...] = ()
        for name in filter(None, m.group(2).split(".")):
            if isinstance(value, dict) and name in value:
                value = value[name]
            else:
                try:
                    if fallback is None or not isinstance(value, dict):
                        raise KeyError(name)
                    value = fallback(path, name)
                except KeyError:
                    fields = ", ".join(value) if isinstance(value, dict) else "none"
                    raise click.BadParameter(f"{m.group(0)}: no field {name!r} (fields: {fields})",
                                             param_hint="--format") from None
            path += (name,)
        return _json(value) if m.group(1) else go_value(value)

    out = FIELD.sub(field, template)
    if "{{" in out:
        raise click.BadParameter(f"{template!r}: only {{{{.Field}}}}, {{{{json .Field}}}} and "
                                 "{{json .}} are understood", param_hint="--format")
    return out
