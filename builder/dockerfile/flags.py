"""``--flag[=value]`` parsing for instructions.

An instruction declares the flags it accepts; anything else is an error that suggests the
nearest accepted flag. Flag names and values follow BuildKit: booleans accept ``--link``,
``--link=true`` and ``--link=false``; string flags need ``=value``; list flags (``--mount``,
``--exclude``) may repeat; ``--`` ends the flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import bad_flag_value, duplicate_flag, flag_needs_value, unknown_flag
from .syntax import Node

__all__ = ["Flags"]


@dataclass
class Flags:
    """Parses ``--name[=value]`` flags against what one instruction accepts.

    ``spec`` maps a flag name to ``bool`` (``--link``, ``--link=false``), ``str`` (one
    value) or ``list`` (repeatable, e.g. ``--mount``).
    """

    node: Node
    file: str
    spec: dict[str, type]
    values: dict[str, Any] = field(default_factory=dict)

    def parse(self) -> dict[str, Any]:
        kw = self.node.keyword
        for raw in self.node.flags:
            if raw == "--":
                break
            if not raw.startswith("--"):
                raise self.node.error(f"flag {raw!r} should start with --", file=self.file,
                                      near=raw)
            name, has_value, value = raw[2:].partition("=")
            kind = self.spec.get(name)
            if kind is None:
                raise self.node.error(unknown_flag(kw, name, self.spec), file=self.file,
                                      near=raw)
            if name in self.values and kind is not list:
                raise self.node.error(duplicate_flag(kw, name), file=self.file, near=raw)
            if kind is bool:
                if has_value and value == "":
                    raise self.node.error(flag_needs_value(kw, name), file=self.file, near=raw)
                if value.lower() not in ("", "true", "false"):
                    raise self.node.error(bad_flag_value(kw, name, value, "true or false"),
                                          file=self.file, near=raw)
                self.values[name] = value.lower() != "false"
            else:
                if not has_value:
                    raise self.node.error(flag_needs_value(kw, name), file=self.file, near=raw)
                if kind is list:
                    self.values.setdefault(name, []).append(value)
                else:
                    self.values[name] = value
        return self.values
