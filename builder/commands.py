"""``pybuild build`` and ``pybuild parse``: the builder package's commands.

Named, not imported: the root group (:mod:`builder.cli`) imports a command's module
only when that command runs."""

from __future__ import annotations

__all__ = ["COMMANDS"]

COMMANDS: dict[str, str] = {
    "build": "builder.build_cmd:build",
    "builder": "builder.prune_cmd:builder",
    "parse": "builder.dockerfile.parse_cmd:parse_command",
}
