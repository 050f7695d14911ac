"""``pybuild builder prune``: the command line of :mod:`builder.prune`."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import click

from cas.cli import DURATION
from cas.location import check_owner, default_storage_dir
from cas.units import parse_seconds, parse_size

from .prune import PruneError, prune
from .sandbox.userns import become_root

__all__ = ["builder"]


@click.group()
def builder() -> None:
    """The build cache: extracted layers, cached steps, context-file hashes."""


@builder.command("prune")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Storage directory (default: $PYBUILD_STORAGE or the XDG data dir).")
@click.option("--older-than", "older_than", type=DURATION, default="48h", show_default=True,
              help="Remove cache entries created longer ago than this (30m, 48h, 7d).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="As docker builder prune: until=DURATION (as --older-than), "
                   "type=exec.cachemount (only RUN --mount=type=cache directories).")
@click.option("-a", "--all", "everything", is_flag=True, help="Remove every cache entry.")
@click.option("-f", "--force", is_flag=True,
              help="Accepted for docker's sake: prune never asks for confirmation.")
@click.option("--wait", type=DURATION, default="0s", show_default=True,
              help="How long to wait for running builds to finish (30s, 5m).")
@click.option("--keep-storage", "keep_storage", default=None, metavar="SIZE",
              help="As docker builder prune: keep the most recently used extracted layers "
                   "and cache mounts, up to SIZE (512m, 10g; binary units); nothing goes by "
                   "age unless --older-than or --filter until= is given too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def prune_command(ctx: click.Context, storage: Path | None, older_than: float,
                  filters: tuple[str, ...], everything: bool, force: bool, wait: float,
                  keep_storage: str | None, as_json: bool) -> None:
    """Remove old build-cache entries, the extracted layers only they used, the
    remembered hashes of context files that are gone, and RUN --mount=type=cache
    directories not used since. `pybuild storage gc` then reclaims the layer blobs
    nothing else links."""
    until, only_mounts = _filters(filters)
    keep_bytes = _keep_storage(keep_storage)
    # as BuildKit: an until= filter holds with --all too (--all: not only dangling ones)
    age = until if until is not None else None if everything else older_than
    if keep_bytes is not None and until is None and \
            ctx.get_parameter_source("older_than") is click.core.ParameterSource.DEFAULT:
        # as docker builder prune --keep-storage: by size alone (--all too), no age limit
        age = math.inf
    check_owner(storage or default_storage_dir())  # named as this user, not as the namespace's root
    become_root()  # snapshots hold files of the user namespace's other ids
    try:
        report = asyncio.run(prune(storage or default_storage_dir(), older_than=age, wait=wait,
                                   only_mounts=only_mounts, keep_bytes=keep_bytes))
    except PruneError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        # "snapshots": the extracted layers' name before (the output keeps its keys)
        click.echo(json.dumps({"entries": report.entries, "snapshots": report.extracted,
                               "snapshot_bytes": report.extracted_bytes,
                               "file_hashes": report.file_hashes,
                               "work_dirs": report.work_dirs,
                               "work_bytes": report.work_bytes,
                               "cache_mounts": report.cache_mounts,
                               "cache_mount_bytes": report.cache_mount_bytes,
                               "clamped_layers": report.clamped}))
        return
    left = (f", {report.work_dirs} work directories of killed builds "
            f"({report.work_bytes / 1e6:.1f} MB)" if report.work_dirs else "")
    if report.cache_mounts:
        left += (f", {report.cache_mounts} cache mounts "
                 f"({report.cache_mount_bytes / 1e6:.1f} MB)")
    if report.clamped:
        left += (f", {report.clamped} copies of cached layers with their times set to a "
                 "SOURCE_DATE_EPOCH")
    click.echo(f"removed {report.entries} cache entries, {report.extracted} extracted layers "
               f"({report.extracted_bytes / 1e6:.1f} MB){left} and {report.file_hashes} file "
               "hashes; `pybuild storage gc` reclaims the blobs")


def _keep_storage(value: str | None) -> int | None:
    """``--keep-storage SIZE`` in bytes, as docker reads it (binary units: ``10g``,
    ``512MB``, bytes)."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size such as 512m, 10g or 1073741824 "
                                 "(binary units)", param_hint="'--keep-storage'") from None


def _filters(values: tuple[str, ...]) -> tuple[float | None, bool]:
    """``--filter`` values as docker builder prune takes them: ``(until seconds or None,
    only cache mounts)``."""
    until: float | None = None
    only_mounts = False
    for value in values:
        key, sep, arg = value.partition("=")
        if key in ("until", "unused-for") and sep:  # unused-for: docker's older name
            try:
                until = parse_seconds(arg)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="'--filter'") from None
        elif key == "type" and arg == "exec.cachemount":
            only_mounts = True
        else:
            raise click.BadParameter(
                f"{value!r}: pybuild builder prune takes until=DURATION (30m, 48h, 7d) and "
                "type=exec.cachemount", param_hint="'--filter'")
    return until, only_mounts
