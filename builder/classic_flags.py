"""docker build's classic-builder flags, hidden and ignored as BuildKit ignores them:
:func:`classic_builder_flags` adds them to ``pybuild build``, :func:`warn_classic_flags`
says buildx's warning for those it warns about."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["classic_builder_flags", "warn_classic_flags"]

# The classic builder's flags of docker build, hidden: docker build with BuildKit (20.10)
# and buildx accept them and ignore them, so that `docker build --rm --force-rm -m 1g -t
# app .` in a script runs unchanged. BuildKit applies no resource settings to RUN steps,
# nor does pybuild. (name, option words, type: None for a flag)
_CLASSIC: list[tuple[str, tuple[str, ...], Any]] = [
    ("rm", ("--rm",), None), ("force_rm", ("--force-rm",), None),
    ("compress", ("--compress",), None), ("disable_content_trust", ("--disable-content-trust",), None),
    ("memory", ("-m", "--memory"), str), ("memory_swap", ("--memory-swap",), str),
    ("cpu_shares", ("-c", "--cpu-shares"), int), ("cpu_period", ("--cpu-period",), int),
    ("cpu_quota", ("--cpu-quota",), int), ("cpuset_cpus", ("--cpuset-cpus",), str),
    ("cpuset_mems", ("--cpuset-mems",), str), ("cgroup_parent", ("--cgroup-parent",), str),
    # ignored with buildx's warning (below)
    ("isolation", ("--isolation",), str), ("security_opt", ("--security-opt",), str),
    ("squash", ("--squash",), None),
]
_WARNINGS = {
    "isolation": "isolation flag is deprecated with BuildKit.",
    "security_opt": 'security-opt flag is deprecated. "RUN --security=insecure" should be '
                    "used with --allow security.insecure",
    "squash": "experimental flag squash is removed with BuildKit. You should squash inside "
              "build using a multi-stage Dockerfile for efficiency.",
}


def classic_builder_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The classic builder's flags (hidden), passed as ``classic_<name>`` keyword arguments
    for :func:`warn_classic_flags`."""
    for name, words, kind in reversed(_CLASSIC):
        if kind is None:  # docker's default: content trust off, the rest false
            fn = click.option(*words, f"classic_{name}", is_flag=True, hidden=True,
                              default=name == "disable_content_trust")(fn)
        else:
            fn = click.option(*words, f"classic_{name}", type=kind, multiple=True, hidden=True)(fn)
    return fn


def warn_classic_flags(given: dict[str, object]) -> None:
    """buildx's warning for each classic flag given that it warns about; a usage error for
    ``--disable-content-trust=false``, which asks for what pybuild does not do (verify
    Notary signatures of base images): ignoring it would build from unverified images."""
    if given.get("classic_disable_content_trust") is False:
        raise click.UsageError("content trust (Notary signatures) is not supported: leave out "
                               "--disable-content-trust=false; pin base images by digest "
                               "(FROM NAME@sha256:...) instead")
    for name, warning in _WARNINGS.items():
        if given.get(f"classic_{name}"):
            click.echo(f"WARNING: {warning}", err=True)
