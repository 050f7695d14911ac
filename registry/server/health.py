"""File health checks (CNCF Distribution's ``health.file``): a way to take a replica out.

``health.file`` lists files to watch, each with how often to look (``interval``, a Go
duration, default 10s). While one of them exists the registry answers every request
503 ``UNAVAILABLE``, before authentication, as Distribution does, so an operator (or a
deployment script) drains a replica by creating the file and brings it back by removing
it. pybuild looks once when it starts, then every ``interval``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..client.transfer import cancel_all
from ..errors import UNAVAILABLE
from .proxy_config import parse_duration

__all__ = ["HEALTH", "FileCheck", "Health", "check_health", "health_context", "parse_file_checks"]


@dataclass(frozen=True, slots=True)
class FileCheck:
    """Fail while ``file`` exists; look every ``interval`` seconds."""

    file: Path
    interval: float = 10.0


def parse_file_checks(value: Any) -> tuple[FileCheck, ...]:
    """``health.file``: a list of ``{file, interval}`` (or its YAML/JSON text); ValueError
    naming the entry."""
    if isinstance(value, tuple) and all(isinstance(c, FileCheck) for c in value):
        return value
    if isinstance(value, str):  # the environment's YAML/JSON text
        import yaml

        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ValueError(f"not valid YAML/JSON: {exc}") from exc
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"expected a list of {{file: PATH, interval: 10s}}, got {value!r}")
    checks = []
    for i, entry in enumerate(value):
        where = f"health.file[{i}]"
        if not isinstance(entry, Mapping) or not entry.get("file"):
            raise ValueError(f"{where}: expected {{file: PATH, interval: 10s}}, got {entry!r}")
        unknown = sorted(set(entry) - {"file", "interval"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
                             "a file check takes file and interval")
        interval = parse_duration(entry.get("interval", "10s"))
        if interval <= 0:
            raise ValueError(f"{where}.interval must be more than zero, got {entry['interval']!r}")
        checks.append(FileCheck(Path(str(entry["file"])), interval))
    return tuple(checks)


@dataclass(slots=True)
class Health:
    """The files found present at their last look."""

    failing: set[Path] = field(default_factory=set)


HEALTH = web.AppKey("health", Health)


def check_health(request: web.Request) -> None:
    """Raise 503 ``UNAVAILABLE`` while a health check fails."""
    health = request.app.get(HEALTH)
    if health is not None and health.failing:
        names = ", ".join(sorted(map(str, health.failing)))
        raise UNAVAILABLE("service unavailable", detail=f"health check failed: {names} exists")


async def _watch(check: FileCheck, health: Health) -> None:
    while True:
        if await asyncio.to_thread(os.path.lexists, check.file):
            health.failing.add(check.file)
        else:
            health.failing.discard(check.file)
        await asyncio.sleep(check.interval)


def health_context(checks: tuple[FileCheck, ...]
                   ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that watches ``checks`` while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        if not checks:
            yield
            return
        health = app[HEALTH] = Health()
        for check in checks:  # the first look before the first request
            if await asyncio.to_thread(os.path.lexists, check.file):
                health.failing.add(check.file)
        tasks = [asyncio.create_task(_watch(check, health)) for check in checks]
        try:
            yield
        finally:
            await cancel_all(tasks)

    return run
