"""Health checks (CNCF Distribution's ``health``): ways to take a replica out.

``health.file`` lists files to watch, each with how often to look (``interval``, a Go
duration, default 10s). While one of them exists the registry answers every request
503 ``UNAVAILABLE``, before authentication, as Distribution does, so an operator (or a
deployment script) drains a replica by creating the file and brings it back by removing
it. pybuild looks once when it starts, then every ``interval``.

``health.storagedriver`` (``enabled``, ``interval`` default 10s, ``threshold``) asks the
storage every ``interval`` whether it answers: pybuild asks its metadata database, which
every request needs. After ``threshold`` failures in a row (one when 0, as Distribution's
PeriodicChecker), every request is answered 503 ``UNAVAILABLE`` as for a file check, so
a load balancer checking ``GET /v2/`` takes the replica out; the first check that
passes brings it back. Distribution wraps its whole app in this check the same way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..client.transfer import cancel_all
from ..errors import UNAVAILABLE
from .proxy_config import parse_duration

__all__ = ["HEALTH", "FileCheck", "Health", "StorageCheck", "check_health", "health_context", "parse_file_checks",
           "parse_storage_check"]


@dataclass(frozen=True, slots=True)
class FileCheck:
    """Fail while ``file`` exists; look every ``interval`` seconds."""

    file: Path
    interval: float = 10.0


def _from_text(text: str) -> Any:
    """A section given as the environment's YAML/JSON text, parsed; ValueError if it is not."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML/JSON: {exc}") from exc


def parse_file_checks(value: Any) -> tuple[FileCheck, ...]:
    """``health.file``: a list of ``{file, interval}`` (or its YAML/JSON text); ValueError
    naming the entry."""
    if isinstance(value, tuple) and all(isinstance(c, FileCheck) for c in value):
        return value
    if isinstance(value, str):  # the environment's YAML/JSON text
        value = _from_text(value)
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


@dataclass(frozen=True, slots=True)
class StorageCheck:
    """Ask the storage every ``interval`` seconds; fail after ``threshold`` failures in a row."""

    interval: float = 10.0
    threshold: int = 0


def parse_storage_check(value: Any) -> StorageCheck | None:
    """``health.storagedriver``: ``{enabled, interval, threshold}`` (or its YAML/JSON
    text); None when not enabled; ValueError naming the key."""
    if value is None or isinstance(value, StorageCheck):
        return value
    if isinstance(value, str):  # the environment's YAML/JSON text
        value = _from_text(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"expected {{enabled: true, interval: 10s, threshold: 3}}, got {value!r}")
    unknown = sorted(set(value) - {"enabled", "interval", "threshold"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))}; it takes enabled, interval "
                         "and threshold")
    if not isinstance(value.get("enabled", False), bool):
        raise ValueError(f"enabled must be true or false (unquoted), got {value['enabled']!r}")
    threshold = value.get("threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"threshold must be a whole number of failures, got {threshold!r}")
    interval = parse_duration(value.get("interval") or "10s")  # 0: Distribution's default
    if not value.get("enabled", False):
        return None
    return StorageCheck(interval or 10.0, threshold)


@dataclass(slots=True)
class Health:
    """The files found present at their last look; why the storage check fails, if it does."""

    failing: set[Path] = field(default_factory=set)
    storage: str | None = None


HEALTH = web.AppKey("health", Health)


def check_health(request: web.Request) -> None:
    """Raise 503 ``UNAVAILABLE`` while a health check fails."""
    health = request.app.get(HEALTH)
    if health is not None and health.failing:
        names = ", ".join(sorted(map(str, health.failing)))
        raise UNAVAILABLE("service unavailable", detail=f"health check failed: {names} exists")
    if health is not None and health.storage is not None:
        raise UNAVAILABLE("service unavailable: the registry's storage does not answer; retry later",
                          detail="health check failed: please see /debug/health",
                          headers={"Retry-After": "10"})


async def _watch(check: FileCheck, health: Health) -> None:
    while True:
        if await asyncio.to_thread(os.path.lexists, check.file):
            health.failing.add(check.file)
        else:
            health.failing.discard(check.file)
        await asyncio.sleep(check.interval)


async def _ask_storage(check: StorageCheck, probe: Callable[[], Awaitable[object]], health: Health) -> None:
    failures = 0
    while True:
        await asyncio.sleep(check.interval)  # as Distribution: the first check after one interval
        try:
            # Bounded: a database that swallows packets must fail the check, not stall it.
            await asyncio.wait_for(probe(), timeout=max(check.interval, 5.0))
        except Exception as exc:  # a check reports, never raises
            failures += 1
            if failures >= max(check.threshold, 1):
                health.storage = f"the metadata database does not answer: {exc or type(exc).__name__}"
        else:
            failures = 0
            health.storage = None


def health_context(checks: tuple[FileCheck, ...], storage: StorageCheck | None = None,
                   probe: Callable[[], Awaitable[object]] | None = None,
                   ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that watches ``checks`` (and asks ``probe()`` as ``storage``
    says, when both are given) while the app runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        if not checks and (storage is None or probe is None):
            yield
            return
        health = app[HEALTH] = Health()
        for check in checks:  # the first look before the first request
            if await asyncio.to_thread(os.path.lexists, check.file):
                health.failing.add(check.file)
        tasks = [asyncio.create_task(_watch(check, health)) for check in checks]
        if storage is not None and probe is not None:
            tasks.append(asyncio.create_task(_ask_storage(storage, probe, health)))
        try:
            yield
        finally:
            await cancel_all(tasks)

    return run
