"""``pybuild robot create|revoke|list``: robot accounts of the built-in token server
(see registry/server/robots.py and docs/registry.md)."""

from __future__ import annotations

import datetime
from pathlib import Path

import click

from .server.robots import (
    PREFIX,
    RobotError,
    create_robot,
    list_robots,
    revoke_robot,
    robots_path,
)

__all__ = ["robot"]


def _lifetime(text: str) -> float:
    """``--expires``: what every time-span option takes (``cas.units.parse_seconds``), and
    weeks too, alone or with other units (``4w``, ``1w2d``); more than zero."""
    import re

    from cas.units import parse_seconds

    # a week is 7 days: "1w2d" is "7d2d", which the one duration parser reads
    days = re.sub(r"(\d+(?:\.\d*)?|\.\d+)\s*w", lambda m: f"{float(m.group(1)) * 7!r}d", text)
    try:
        seconds = parse_seconds(days)
    except ValueError:
        try:
            seconds = parse_seconds(text)
        except ValueError as exc:
            raise click.BadParameter(f"{exc}; or weeks: 4w", param_hint="'--expires'") from None
    if seconds <= 0:
        raise click.BadParameter(f"{text!r}: a robot's lifetime must be more than 0",
                                 param_hint="'--expires'")
    return seconds


def _storage(storage: Path | None, config_file: Path | None) -> Path:
    from cas.location import default_storage_dir

    from .server import ConfigError, load_config

    if storage is not None:
        return storage
    try:
        config = load_config(config_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    return config.storage or default_storage_dir()


_storage_option = click.option(
    "--storage",
    type=click.Path(file_okay=False, path_type=Path),
    help="The registry's storage directory [default: as pybuild serve finds it].",
)
_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="The registry's config file, to find its storage [default: $PYBUILD_CONFIG].",
)


@click.group("robot")
def robot() -> None:
    """Robot accounts for CI: scoped, expiring, revocable credentials for the registry's
    built-in token server (auth.token.issue)."""


@robot.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="repository:NAME:ACTIONS (NAME may be a pattern, ACTIONS of pull,push,delete,*); repeatable.",
)
@click.option("--expires", default="30d", show_default=True,
              help="Lifetime: 90m, 12h, 30d, 1h30m, 4w or seconds (3600).")
@_storage_option
@_config_option
def create(
    name: str, scopes: tuple[str, ...], expires: str, storage: Path | None, config_file: Path | None
) -> None:
    """Create robot NAME (replacing one of that name) and print its secret, once.

    It logs in as robot+NAME with the secret as password:
    docker login -u robot+NAME --password-stdin REGISTRY
    """
    path = robots_path(_storage(storage, config_file))
    seconds = _lifetime(expires)
    try:
        secret = create_robot(path, name, list(scopes), seconds)
    except (RobotError, ValueError) as exc:
        raise click.UsageError(str(exc)) from exc
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    click.echo(f"robot {PREFIX}{name} created, valid until {until:%Y-%m-%dT%H:%M:%SZ}; its secret:", err=True)
    click.echo(secret)


@robot.command("revoke")
@click.argument("name")
@_storage_option
@_config_option
def revoke(name: str, storage: Path | None, config_file: Path | None) -> None:
    """Revoke robot NAME: it gets no new token and the ones it holds stop working."""
    path = robots_path(_storage(storage, config_file))
    try:
        removed = revoke_robot(path, name)
    except RobotError as exc:
        raise click.ClickException(str(exc)) from exc
    if not removed:
        raise click.ClickException(f"no robot named {name!r} (see 'pybuild robot list')")
    click.echo(f"robot {PREFIX}{name} revoked", err=True)


@robot.command("list")
@_storage_option
@_config_option
def list_command(storage: Path | None, config_file: Path | None) -> None:
    """List robots: name, expiry, scopes."""
    try:
        robots = list_robots(robots_path(_storage(storage, config_file)))
    except RobotError as exc:
        raise click.ClickException(str(exc)) from exc
    for r in robots:
        until = datetime.datetime.fromtimestamp(r.expires, datetime.UTC)
        click.echo(f"{PREFIX}{r.name}\t{until:%Y-%m-%dT%H:%M:%SZ}\t{' '.join(r.scopes)}")
