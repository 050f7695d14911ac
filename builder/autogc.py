"""The build cache bounds itself: after every build, what ``pybuild builder prune
--keep-storage`` would remove when the cache takes more than its bound.

As BuildKit's garbage collector (on by default in buildkitd and in Docker 25+, the
daemon's ``builder.gc``), whose default bound is a tenth of the disk that holds its state,
at most 10 GB. What goes first is what ``--keep-storage`` removes: the least recently used
extracted layers (``builder/snapshots``), cached steps (each counted with its layer blob;
a build that finds a step in the cache records its use, and so does a rebuild the fast
path answers) and ``RUN --mount=type=cache`` directories; never one the build that just
ended used (used at or after its start) nor one a running build holds (the collection
needs ``builder/lock`` exclusively, as prune does, and is left to the next build while
another build runs). The blobs of the steps removed lose their holder and go with a
garbage collection of the store (``pybuild storage gc``'s, with its grace: a blob made
within the hour stays until a later one), unless an image or another holder links them.

The bound: ``pybuild build --gc-keep-storage SIZE`` or ``$PYBUILD_GC_KEEP_STORAGE``
(``10g``, ``512m``: binary units, as ``--keep-storage``); ``0`` or ``off`` turns it off.

Measuring the cache means walking it, which a build under the bound must not pay for. The
last measurement is kept in ``builder/gc-state`` (the cache's bytes, and the bytes used on
its file system then); the cache cannot have grown by more than the file system has since
(unless other files went meanwhile: a measurement stands for a day at most), so while that
sum stays within the bound nothing is walked (a ``statvfs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import click

from cas import StoreConfig, open_store
from cas.errors import CasError
from cas.units import human_bytes, parse_size

from .progress import BuildProgress
from .prune import BuildLock, PruneError, _keep_within, unlink_steps

__all__ = ["ENV", "GcReport", "after_build", "bound_option", "collect", "default_bound",
           "message", "parse_bound"]

ENV = "PYBUILD_GC_KEEP_STORAGE"
STATE = "gc-state"  # in <storage>/builder: {"cache", "fs_used": bytes, "dev", "at"} when measured
_SHARE = 10  # percent of the file system, as BuildKit's default reserved space
_CAP = 10 * 10**9  # BuildKit's cap on it (10 GB)
_FALLBACK = 2 * 10**9  # BuildKit's bound when the disk's size cannot be read (2 GB)
_REMEASURE = 86400  # seconds: the longest a measurement stands in for a walk


@dataclass(frozen=True)
class GcReport:
    layers: int  # extracted layers removed
    mounts: int  # cache mounts removed
    removed: int  # their bytes (and the steps' layer blobs)
    steps: int  # cached steps removed (their blobs unlinked: storage gc's to reclaim)
    left: int  # the bytes the cache takes now
    bound: int


def parse_bound(value: str) -> int:
    """The bound as ``--gc-keep-storage``/``$PYBUILD_GC_KEEP_STORAGE`` give it: bytes, 0
    for off. Raises ValueError naming what is taken."""
    if value.strip().lower() == "off":
        return 0
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a size such as 512m or 10g (binary units), or "
                         "0 or off to keep the build cache unbounded") from None


def bound_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """The click callback of ``pybuild build --gc-keep-storage``: :func:`parse_bound`
    (None: the default), its error naming the option or the environment variable."""
    try:
        return None if value is None else parse_bound(value)
    except ValueError as exc:
        env = ctx.get_parameter_source(str(param.name)) == \
            click.core.ParameterSource.ENVIRONMENT
        raise click.BadParameter(str(exc), param_hint=f"${ENV}" if env else None) from None


def default_bound(storage: Path) -> int:
    """A tenth of the file system that holds ``storage``, at most 10 GB (BuildKit's)."""
    try:
        st = os.statvfs(storage)
    except OSError:
        return _FALLBACK
    return min(st.f_blocks * st.f_frsize * _SHARE // 100, _CAP)


def _fs_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _collect(storage: Path, bound: int, since: float) -> tuple[GcReport, list[str]] | None:
    bdir = storage / "builder"
    state = bdir / STATE
    try:
        last = json.loads(state.read_text())
        # the same file system (a storage moved elsewhere is measured again), and within a
        # day (files removed beside the cache while it grew hide that growth from fs_used)
        if (last["dev"] == os.stat(bdir).st_dev and time.time() - last["at"] < _REMEASURE
                and int(last["cache"]) + max(0, _fs_used(bdir) - int(last["fs_used"])) <= bound):
            return None  # cannot be over the bound: no walk
    except (OSError, ValueError, KeyError, TypeError):
        pass  # never measured (or unreadable): measure
    lock = BuildLock(bdir)
    try:
        lock.acquire(exclusive=True, wait=0)
    except PruneError:
        return None  # another build runs: the next build to end collects
    try:
        (layers, mounts, steps), sizes, left, dropped = _keep_within(bdir, bound, True, since)
        tmp = bdir / f".{STATE}.tmp"
        tmp.write_text(json.dumps({"cache": left, "fs_used": _fs_used(bdir),
                                   "dev": os.stat(bdir).st_dev, "at": time.time()}))
        os.replace(tmp, state)
    finally:
        lock.release()
    return GcReport(layers, mounts, sum(sizes), steps, left, bound), dropped


async def collect(storage: Path, bound: int | None, since: float) -> GcReport | None:
    """Bring the build cache under ``storage`` within ``bound`` bytes (None: the default;
    0: do nothing), sparing what was used at or after ``since`` (epoch seconds). Call it
    once the build no longer holds ``builder/lock``. None when nothing was walked."""
    if bound == 0:
        return None
    bound = default_bound(storage) if bound is None else bound
    with contextlib.suppress(OSError, CasError):  # the build is done: it stands
        done = await asyncio.to_thread(_collect, storage, bound, since)
        if done is not None and done[1]:
            await unlink_steps(storage, done[1])
            async with await open_store(StoreConfig(storage)) as store:
                await store.gc()  # with its grace: an upload's blob not linked yet stays
        return None if done is None else done[0]
    return None


def message(report: GcReport) -> str:
    """The line a build prints when its collection removed something."""
    what = [f"{n} {name}{'s' * (n != 1)}" for n, name in (
        (report.layers, "extracted layer"), (report.steps, "cached step"),
        (report.mounts, "cache mount")) if n]
    listed = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else "".join(what)
    return (f"build cache over its bound of {human_bytes(report.bound)}: removed the least "
            f"recently used {listed} ({human_bytes(report.removed)}), "
            f"{human_bytes(report.left)} left (--gc-keep-storage or ${ENV} sets the bound, "
            "off keeps the cache unbounded)")


async def after_build(storage: Path, bound: int | None, since: float,
                      progress: BuildProgress) -> None:
    """:func:`collect`, and one line in the build's output when something went."""
    report = await collect(storage, bound, since)
    if report is not None and (report.layers or report.mounts or report.steps):
        progress.collected(message(report), {
            "extracted_layers": report.layers, "cache_mounts": report.mounts,
            "cached_steps": report.steps,
            "removed_bytes": report.removed, "left_bytes": report.left,
            "keep_storage": report.bound})
