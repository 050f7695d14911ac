"""The ``pybuild`` command: one root click group that each package extends.

``cas`` contributes ``pybuild storage ...``, ``registry`` contributes ``serve``,
``push``, ``pull``, ``copy`` and friends, ``builder`` contributes ``build`` and ``parse``.
The root lives here because ``builder`` is the top of the one-way dependency chain
(builder -> registry -> cas) and so is the one package allowed to import the others.
"""

from __future__ import annotations

import click

from cas.cli import storage
from registry.cli import register as register_registry

from .commands import register as register_builder

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pybuild", prog_name="pybuild")
def main() -> None:
    """pybuild: a daemonless image builder and a layer-deduplicating OCI registry."""


main.add_command(storage)

register_registry(main)
register_builder(main)
