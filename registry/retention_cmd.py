"""``pybuild storage retention``: apply the registry's retention (registry/server/retention.py)
to a storage directory once, online: a running ``pybuild serve`` on the same directory keeps
serving and accepting pushes.

``pybuild storage`` is ``cas``'s group; the registry adds this command to it here, so
``cas`` stays free of registry knowledge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cas.cli import DURATION, storage
from cas.location import StoreConfig

if TYPE_CHECKING:  # the server loads only when the command runs: `storage stats` stays quick
    from cas.s3_location import S3Location

    from .server.retention import RetentionReport, RetentionSettings

__all__ = ["storage"]


async def _run(root: Path, database: str | None, packs: S3Location | None,
               settings: RetentionSettings, dry_run: bool, gc: bool) -> tuple[RetentionReport, Any]:
    from cas.open import open_store

    from .server.metadata_open import open_metadata
    from .server.retention import run_retention

    # the config's packs (storage.s3, with its keys), as `pybuild serve` opens them
    store = await open_store(StoreConfig.at(root, database=database).with_packs_in(packs))
    try:
        meta = await open_metadata(root, database)
        try:
            report = await run_retention(store, meta, settings, dry_run=dry_run)
        finally:
            await meta.close()
        collected = None
        if gc and not dry_run:
            collected = await store.gc(grace=settings.upload_grace)
        return report, collected
    finally:
        await store.close()


@storage.command()
@click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Store directory [default: the config's storage, $PYBUILD_STORAGE or "
                   "~/.local/share/pybuild].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="The registry config file with the retention: section "
                                 "[default: $PYBUILD_CONFIG].")
@click.option("--dry-run", is_flag=True, help="Change nothing; list what would go.")
@click.option("--untagged-delay", type=DURATION, default=None,
              help="Untagged manifests pushed longer ago than this go (e.g. 24h, 7d) "
                   "[default: retention.untagged_delay, 24h].")
@click.option("--upload-grace", type=DURATION, default=None,
              help="Blob links made more recently than this stay [default: "
                   "retention.upload_grace, 1h].")
@click.option("--gc/--no-gc", default=True, show_default=True,
              help="Run storage gc afterwards (with the upload grace), freeing the space.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def retention(storage: Path | None, config_file: Path | None, dry_run: bool,
              untagged_delay: float | None, upload_grace: float | None, gc: bool,
              as_json: bool) -> None:
    """Delete the tags retention policies do not keep, untagged manifests and the blob
    links nothing references (safe while the registry serves and pushes go on)."""
    from cas.location import default_storage_dir

    from .server.config import ConfigError, load_config
    from .server.retention import RetentionSettings, settings_from

    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    settings = settings_from(config)
    if untagged_delay is not None:
        settings = RetentionSettings(untagged_delay, settings.upload_grace, settings.policies)
    if upload_grace is not None:
        settings = RetentionSettings(settings.untagged_delay, upload_grace, settings.policies)
    root = storage or config.storage or default_storage_dir()
    if config.database is None and not (root / "registry.db").is_file():
        # Opening would make an empty store there: a mistyped path "collects" nothing.
        raise click.ClickException(
            f"{root} holds no registry (no registry.db): give --storage (or storage in "
            "--config) the directory `pybuild serve` stores in"
        )
    report, collected = asyncio.run(_run(root, config.database, config.packs, settings, dry_run, gc))
    if as_json:
        doc = report.to_json()
        if collected is not None:
            doc["gc"] = collected.to_json()
        click.echo(json.dumps(doc))
        return
    verb = "would delete" if dry_run else "deleted"
    for repo in report.repositories:
        for tag in repo.tags:
            click.echo(f"{verb} tag {repo.repository}:{tag}")
        for digest in repo.manifests:
            click.echo(f"{verb} manifest {repo.repository}@{digest}")
        for digest in repo.blobs:
            what = "would unlink (once its link is older than the upload grace)" if dry_run else "unlinked"
            click.echo(f"{what} blob {repo.repository}@{digest}")
    click.echo(f"{verb} {report.tags} tag(s), {report.manifests} manifest(s); "
               f"{'would unlink' if dry_run else 'unlinked'} {report.blobs} blob(s)"
               + (f"; gc freed {collected.bytes_freed} bytes" if collected is not None else "")
               + (f", kept {collected.blobs_kept_by_grace} unreferenced blob(s) "
                  f"({collected.bytes_kept_by_grace} bytes) younger than the upload grace"
                  if collected is not None and collected.blobs_kept_by_grace else ""))
