"""The registries a benchmark measures: the peer (CNCF Distribution) and pybuild.

pybuild's registry is started as ``python3 -m builder serve --addr 127.0.0.1:PORT
--storage DIR``; until that command exists its side of a benchmark is skipped with a
message saying so. ``--target NAME=HOST:PORT`` adds a registry that is already running.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testkit.registries import (
    RegistryError,
    distribution_registry,
    pybuild_registry,
    pybuild_serve_available,
)

__all__ = ["PYBUILD_MISSING", "NotAvailable", "Target", "registry_targets"]

PYBUILD_MISSING = (
    "`python3 -m builder serve` does not exist yet in this checkout; "
    "pybuild's side runs as soon as it does"
)


class NotAvailable(RuntimeError):
    """A target cannot be measured on this machine (the message says why and what to do)."""


@dataclass(frozen=True)
class Target:
    """A registry to measure: its label and how to get it running."""

    name: str
    kind: str  # "distribution", "pybuild" or "external"
    addr: str = ""

    @contextmanager
    def running(self, workdir: Path) -> Iterator[tuple[str, int | None]]:
        """Start the registry (storage under ``workdir``), yield its address and its
        server's process id (None for an external one), stop and clean."""
        if self.kind == "external":
            yield self.addr, None
            return
        if self.kind == "distribution":
            if shutil.which("docker-registry") is None:
                raise NotAvailable("docker-registry is not installed; install docker-registry")
            manager = distribution_registry(workdir)
        elif self.kind == "pybuild":
            if not pybuild_serve_available():
                raise NotAvailable(PYBUILD_MISSING)
            manager = pybuild_registry(workdir)
        else:
            raise ValueError(f"unknown target kind {self.kind!r}")
        try:
            with manager as running:
                yield running.addr, running.pid
        except RegistryError as exc:
            raise NotAvailable(f"{self.name} did not start: {exc}") from exc
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def registry_targets(external: list[str], *, pybuild: bool = True) -> list[Target]:
    """The peer, pybuild (unless ``pybuild`` is False) and every ``NAME=HOST:PORT``."""
    targets = [Target("distribution", "distribution")]
    if pybuild:
        targets.append(Target("pybuild", "pybuild"))
    for spec in external:
        name, sep, addr = spec.partition("=")
        if not sep or not name or ":" not in addr:
            raise ValueError(f"--target {spec!r}: expected NAME=HOST:PORT")
        targets.append(Target(name, "external", addr))
    return targets
