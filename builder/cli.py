"""The ``pybuild`` command: one root click group that each package extends.

``cas`` contributes ``pybuild storage ...``, ``registry`` contributes ``serve``,
``push``, ``pull``, ``copy`` and friends, ``builder`` contributes ``build`` and ``parse``.
The root lives here because ``builder`` is the top of the one-way dependency chain
(builder -> registry -> cas) and so is the one package allowed to import the others.

Packages register their commands only when a command is looked up: ``pybuild build``
then imports the builder alone, not the registry's server and HTTP client (aiohttp
costs a few hundred milliseconds of start-up, more than a cached rebuild's work).
"""

from __future__ import annotations

import click

__all__ = ["main"]

_BUILDER_COMMANDS = frozenset({"build", "parse"})


class _Root(click.Group):
    """A group that registers the package owning a command on first use."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._loaded: set[str] = set()

    def _load(self, package: str) -> None:
        if package in self._loaded:
            return
        self._loaded.add(package)
        if package == "builder":
            from .commands import register as register_builder
            register_builder(self)
        elif package == "cas":
            from cas.cli import storage
            self.add_command(storage)
        else:
            from registry.cli import register as register_registry
            register_registry(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load("builder")
        if cmd_name not in self.commands:
            self._load("cas")
            self._load("registry")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for package in ("cas", "registry", "builder"):
            self._load(package)
        return super().list_commands(ctx)


@click.group(cls=_Root, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pybuild", prog_name="pybuild")
def main() -> None:
    """pybuild: a daemonless image builder and a layer-deduplicating OCI registry."""
