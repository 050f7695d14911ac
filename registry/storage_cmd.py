"""``pybuild storage``: the store's commands (:mod:`cas.cli`) plus the registry's:
``retention`` (:mod:`registry.retention_cmd`) and ``migrate``, which brings a PostgreSQL
database's schemas up to date: the store's (``cas``) and the registry's. They live here
because they know both; ``cas`` knows nothing of the registry."""

from __future__ import annotations

import json

import click

from cas.cli import storage

from . import retention_cmd  # noqa: F401 - adds `storage retention` to the group

__all__ = ["storage"]


@storage.command()
@click.option("--database", envvar="PYBUILD_DATABASE_URL", required=True, metavar="URL",
              help="The PostgreSQL database (postgresql://USER@HOST/DB) "
                   "[default: $PYBUILD_DATABASE_URL].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def migrate(database: str, as_json: bool) -> None:
    """Apply the schema migrations a PostgreSQL metadata database lacks (safe to run from
    several machines at once: they take turns, the later ones find nothing to do)."""
    from cas.errors import StorageError
    from cas.pg_db import PgDatabase
    from cas.pg_meta import MIGRATIONS as CAS_MIGRATIONS

    from .server.metadata_pg import MIGRATIONS as REGISTRY_MIGRATIONS

    done = {}
    try:
        for component, steps in (("cas", CAS_MIGRATIONS), ("registry", REGISTRY_MIGRATIONS)):
            db = PgDatabase(database, component, steps, check=False, max_size=1)
            try:
                done[component] = db.migrate()
            finally:
                db.close()
    except StorageError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps({c: {"from": a, "to": b} for c, (a, b) in done.items()}))
        return
    for component, (before, after) in done.items():
        what = "up to date" if before == after else f"migrated from version {before}"
        click.echo(f"{component} schema: version {after} ({what})")
