"""``pybuild builder prune``: the command line of :mod:`builder.prune`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from cas.location import check_owner, default_storage_dir
from cas.units import parse_duration

from .prune import PruneError, prune
from .sandbox.userns import become_root

__all__ = ["builder"]


def older_than_seconds(text: str) -> float:
    """``--older-than``: ``90s``, ``30m``, ``48h``, ``7d`` (any duration
    :func:`cas.units.parse_duration` reads), or a number of seconds."""
    try:
        return parse_duration(text, bare_unit="s") / 1e9
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a duration such as 30m, 48h or 7d") from None


@click.group()
def builder() -> None:
    """The build cache: extracted layers, cached steps, context-file hashes."""


@builder.command("prune")
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Storage directory (default: $PYBUILD_STORAGE or the XDG data dir).")
@click.option("--older-than", "older_than", default="48h", show_default=True,
              help="Remove cache entries created longer ago than this (30m, 48h, 7d).")
@click.option("-a", "--all", "everything", is_flag=True, help="Remove every cache entry.")
@click.option("-f", "--force", is_flag=True,
              help="Accepted for docker's sake: prune never asks for confirmation.")
@click.option("--wait", type=float, default=0.0, show_default=True,
              help="Seconds to wait for running builds to finish.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def prune_command(storage: Path | None, older_than: str, everything: bool, force: bool,
                  wait: float, as_json: bool) -> None:
    """Remove old build-cache entries, the extracted layers only they used, and the
    remembered hashes of context files that are gone. `pybuild storage gc` then
    reclaims the layer blobs nothing else links."""
    age = None if everything else older_than_seconds(older_than)
    check_owner(storage or default_storage_dir())  # named as this user, not as the namespace's root
    become_root()  # snapshots hold files of the user namespace's other ids
    try:
        report = asyncio.run(prune(storage or default_storage_dir(), older_than=age, wait=wait))
    except PruneError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        # "snapshots": the extracted layers' name before (the output keeps its keys)
        click.echo(json.dumps({"entries": report.entries, "snapshots": report.extracted,
                               "snapshot_bytes": report.extracted_bytes,
                               "file_hashes": report.file_hashes,
                               "work_dirs": report.work_dirs,
                               "work_bytes": report.work_bytes}))
        return
    left = (f", {report.work_dirs} work directories of killed builds "
            f"({report.work_bytes / 1e6:.1f} MB)" if report.work_dirs else "")
    click.echo(f"removed {report.entries} cache entries, {report.extracted} extracted layers "
               f"({report.extracted_bytes / 1e6:.1f} MB){left} and {report.file_hashes} file "
               "hashes; `pybuild storage gc` reclaims the blobs")
