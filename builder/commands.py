"""``pybuild build`` and ``pybuild parse``: the builder package's commands.

Named, not imported: the root group (:mod:`builder.cli`) imports a command's module
only when that command runs."""

from __future__ import annotations

__all__ = ["COMMANDS", "SUMMARIES"]

COMMANDS: dict[str, str] = {
    "build": "builder.build_cmd:build",
    "builder": "builder.prune_cmd:builder",
    "parse": "builder.dockerfile.parse_cmd:parse_command",
}

# What ``pybuild --help`` says of each, without importing it (a test checks each is the
# command's own ``short_help``).
SUMMARIES: dict[str, str] = {
    "build": "Build an image from a Dockerfile and a context directory.",
    "builder": "Prune the build cache: extracted layers, steps, context hashes.",
    "parse": "Parse a Dockerfile and print its instructions.",
}
