"""``pybuild serve``, ``robot``, ``push``, ``pull``, ``copy``, ``tag``, ``inspect``,
``history``...: the registry package's commands.

Named, not imported: the root group imports a command's module only when that command
runs, so ``pybuild pull`` does not import the server."""

from __future__ import annotations

__all__ = ["COMMANDS", "JSON_ERRORS", "SUMMARIES"]

# Set in the click context's ``meta`` by a command run with ``--json``: the root group
# then ends a failure with an ``{"event": "error", ...}`` line on stdout as well, so a
# program reading the events learns why the command failed, not only that it did.
JSON_ERRORS = "pybuild.json_errors"

COMMANDS: dict[str, str] = {
    "serve": "registry.serve_cmd:serve",
    "robot": "registry.robot_cmd:robot",
    # cas's `storage` group, with `storage retention` and `storage migrate` added by the registry
    "storage": "registry.storage_cmd:storage",
    **{name: f"registry.client.cli:{name}"
       for name in ("pull", "push", "copy", "rmi", "login", "logout")},
    **{name: f"registry.client.image_cmds:{name}"
       for name in ("images", "tag", "inspect", "history")},
}

# What ``pybuild --help`` says of each, without importing it (a test checks each is the
# command's own ``short_help``).
SUMMARIES: dict[str, str] = {
    "serve": "Run the OCI registry.",
    "robot": "Robot accounts for CI: scoped, expiring, revocable credentials.",
    "storage": "Inspect and maintain the content-addressed store.",
    "pull": "Pull an image into the local store.",
    "push": "Push a local image to a registry.",
    "copy": "Copy an image between registries, the store, layouts and archives.",
    "images": "List local images.",
    "rmi": "Remove local images.",
    "login": "Check credentials against a registry and save them.",
    "logout": "Forget the credentials saved for a registry.",
    "tag": "Name a local image also by another name.",
    "inspect": "Print local images' manifests and configs.",
    "history": "Show how a local image was made, step by step.",
}
