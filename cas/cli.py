"""``pybuild storage stats|gc|fsck|init``: inspect and maintain a store directory."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .location import StoreConfig

if TYPE_CHECKING:
    from .store import Store

__all__ = ["DURATION", "database_option", "storage", "storage_option"]

T = TypeVar("T")


class Duration(click.ParamType[float]):
    """A time span option: ``30m``, ``48h``, ``7d`` or seconds (:func:`cas.units.parse_seconds`),
    as seconds; every option that takes one uses this, so all read and refuse alike."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)  # a default given as seconds
        from .units import parse_seconds

        try:
            return parse_seconds(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()


def storage_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage DIR`` (default: $PYBUILD_STORAGE, else the XDG data directory)."""
    return click.option(
        "--storage",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Store directory [default: $PYBUILD_STORAGE or ~/.local/share/pybuild].",
    )(fn)


def database_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--database URL``: the store's metadata is in PostgreSQL (as ``pybuild serve``'s
    ``database.url``), default $PYBUILD_DATABASE_URL; unset: SQLite in the store directory."""
    return click.option(
        "--database", envvar="PYBUILD_DATABASE_URL", default=None, metavar="URL",
        help="PostgreSQL metadata (postgresql://USER@HOST/DB) [default: $PYBUILD_DATABASE_URL; "
             "none: SQLite in the store directory].",
    )(fn)


def _with_store(storage: Path | None, job: Callable[[Store], Awaitable[T]],
                database: str | None = None, *, reading: bool = False) -> T:
    """``job`` on the store, opened for it and closed after. ``reading``: ``job`` only
    reads, so a store on a read-only file system opens read-only (:mod:`cas.read_only`)."""
    from .open import open_store  # the store loads only when a command runs

    async def run() -> T:
        store = await open_store(StoreConfig.at(storage, database=database).for_reading(reading))
        try:
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


@click.group()
def storage() -> None:
    """Inspect and maintain the content-addressed store."""


@storage.command()
@storage_option
@database_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(storage: Path | None, database: str | None, as_json: bool) -> None:
    """Logical and physical bytes, dedup ratio, piece and blob counts."""
    s = _with_store(storage, lambda st: st.stats(), database, reading=True)
    if as_json:
        click.echo(json.dumps(s.to_json()))
        return
    click.echo(f"blobs:          {s.blobs}")
    click.echo(f"pieces:         {s.pieces}")
    click.echo(f"logical bytes:  {s.logical_bytes} ({_human(s.logical_bytes)})")
    click.echo(f"physical bytes: {s.physical_bytes} ({_human(s.physical_bytes)})")
    click.echo(f"disk bytes:     {s.disk_bytes} ({_human(s.disk_bytes)})")
    click.echo(f"dedup ratio:    {s.dedup_ratio:.2f}")
    click.echo(f"open ingests:   {s.open_ingests}")


@storage.command()
@storage_option
@database_option
@click.option("--grace", type=DURATION, default="1h", show_default=True,
              help="Keep unlinked blobs younger than this (90s, 30m, 1h, 7d; a bare number "
                   "is seconds).")
@click.option("--compact-all", is_flag=True,
              help="S3 packs: compact every pack, not only those this run freed space in.")
@click.option("--ingest-ttl", type=DURATION, default="24h", show_default=True,
              help="Abort interrupted uploads and pulls idle longer than this (30m, 24h, 7d; "
                   "as a registry's uploads.ttl; give it the same value).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (progress: JSON events on standard error).")
def gc(storage: Path | None, database: str | None, grace: float, compact_all: bool,
       ingest_ttl: float, as_json: bool) -> None:
    """Remove unreferenced blobs and pieces, and interrupted transfers nobody resumed
    (safe while the store is in use).

    Progress goes to standard error: a status line on a terminal, a line every 5 seconds
    otherwise (CI logs), JSON events with --json."""
    from .cli_progress import GcView

    view = GcView.auto(json_events=as_json)
    try:
        report = _with_store(storage, lambda st: st.gc(grace=grace, compact_all=compact_all,
                                                       ingest_ttl=ingest_ttl, progress=view.update),
                             database)
    finally:
        view.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    click.echo(
        f"removed {report.blobs_removed} blobs and {report.pieces_removed} pieces"
        + (f", aborted {report.ingests_expired} interrupted transfers" if report.ingests_expired else "")
        + f", freed {_human(report.bytes_freed)}"
        + (f", compacted packs by {_human(report.bytes_compacted)}" if report.bytes_compacted else "")
        + (f"; kept {report.blobs_kept_by_grace} unreferenced blobs "
           f"({_human(report.bytes_kept_by_grace)}) younger than --grace {grace:g}s: a later "
           "gc frees them" if report.blobs_kept_by_grace else "")
    )



@storage.command()
@storage_option
@database_option
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (progress: JSON events on standard error).")
def fsck(storage: Path | None, database: str | None, as_json: bool) -> None:
    """Verify every piece's BLAKE3 and every blob's digest. Exit 1 on damage.

    Progress goes to standard error: a bar on a terminal, a line every 5 seconds
    otherwise (CI logs), JSON events with --json."""
    from .cli_progress import FsckView

    view = FsckView.auto(json_events=as_json)
    try:
        report = _with_store(storage, lambda st: st.fsck(progress=view.update), database,
                             reading=True)
    finally:
        view.close()
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        for note in report.notes:
            click.echo(f"note: {note}")
        for problem in report.problems:
            click.echo(f"damaged: {problem}")
        verdict = "clean" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(
            f"checked {report.blobs_checked} blobs and {report.pieces_checked} pieces: {verdict}"
        )
    if not report.ok:
        sys.exit(1)


@storage.command()
@storage_option
@database_option
@click.option("--packs", "packs_url", required=True, metavar="s3://HOST[:PORT]/BUCKET[/PREFIX]",
              help="Keep the store's packs in this S3 bucket (keys: in the URL as KEY:SECRET@, "
                   "or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; ?region=R&secure=false).")
@click.option("--moved", is_flag=True,
              help="The packs were copied to this location (a restore into another bucket or "
                   "prefix): record it in the --database in place of the old one, once it holds "
                   "every pack the database names.")
def init(storage: Path | None, database: str | None, packs_url: str, moved: bool) -> None:
    """Make a store whose packs live in S3-compatible object storage.

    The storage directory records the location (packs.json, with the keys, mode 0600);
    every later command on it (serve, gc, fsck, pull...) then uses those packs."""
    from .s3_location import S3Location

    location = S3Location.parse(packs_url)
    if moved and database is None:
        raise click.UsageError("--moved changes where a PostgreSQL metadata database (--database) "
                               "records the packs; a store without one records them in its "
                               "directory only: use a new --storage directory")

    async def run() -> None:
        from .open import open_store

        if moved:
            assert database is not None
            await asyncio.to_thread(_move, database, location)
        store = await open_store(StoreConfig.at(storage, database=database).with_packs_in(location))
        await store.close()

    asyncio.run(run())
    click.echo(f"store {StoreConfig.at(storage).root}: packs in {location}")


def _move(database: str, location: Any) -> None:
    from .pack_select import move_packs
    from .pg_meta import PgMetadata

    meta = PgMetadata(database)
    try:
        old = move_packs(meta, location)
    finally:
        meta.close()
    if old is not None and not old.same_place(location):
        click.echo(f"packs moved: {old} -> {location}")
