"""``pybuild pull/push/copy/images/rmi/login/logout``: thin click commands over the client.

Registry access flags shared by the transfer commands: ``--ca-cert FILE`` (trust this CA),
``--tls-verify=false`` (do not verify certificates), ``--insecure HOST`` (repeatable;
plain HTTP allowed; also ``PYBUILD_INSECURE_REGISTRIES=host1,host2``). Loopback registries
are always allowed over plain HTTP.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cas.errors import CasError, storage_error

from ..cli import JSON_ERRORS
from ..errors import RegistryError
from .endpoints import TRANSPORTS, Endpoint, check_transport, parse_endpoint
from .errors import ClientError
from .refs import parse_image_ref
from .transfer import DEFAULT_JOBS, TransferOptions

if TYPE_CHECKING:
    from .progress import Progress
    from .remote import ClientOptions

# The image store, the transfer machinery and the HTTP client are imported by the
# commands that use them: `pybuild images` does not wait for what `pull` needs.

__all__ = ["COMMANDS", "finished"]

# True once a command's event loop has ended and closed everything it opened: the
# ``pybuild`` command then exits without the interpreter's teardown (builder.fastpath).
finished = False

T = TypeVar("T")
# Errors that are the user's to act on: said in one line. (ClientError: every error of
# the client, from a bad reference to a registry that broke off.)
_FAILURES = (ClientError, RegistryError, ValueError, OSError)


class _Terminated(click.ClickException):
    """SIGTERM (a CI runner cancelling the job) stopped the command: 143, as 128 + 15."""

    exit_code = 128 + signal.SIGTERM


async def _until_sigterm(coro: Awaitable[T]) -> T:
    """``coro``, cancelled by SIGTERM as Ctrl-C cancels it: transfers stop the same way
    (a pull keeps what it has for the next one) and the command exits 143 with one line
    (``--json``: an error event), as ``pybuild build`` does."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def stop() -> None:
        if not received and task is not None:
            received.append(signal.SIGTERM)
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, stop)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        return await coro
    try:
        return await coro
    except asyncio.CancelledError:
        if received:
            raise _Terminated("interrupted by SIGTERM: the transfer stopped") from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _run(coro: Awaitable[T]) -> T:
    global finished
    try:
        result: T = asyncio.run(_until_sigterm(coro))
    except _FAILURES as exc:
        if isinstance(exc, BrokenPipeError):
            raise  # stdout closed (| head): the root command ends quietly
        if isinstance(exc, OSError) and not isinstance(exc, CasError) and (
                storage_error(exc, exc.filename or "") is not None
                or exc.errno in (errno.EMFILE, errno.ENFILE)):
            # A full or read-only file system, or no file descriptor left: the root
            # command says whether it is the storage directory or a destination, or
            # which limit, and what to do.
            raise
        raise click.ClickException(" ".join(str(exc).split())) from exc
    finished = True
    return result


def _ref(text: str) -> Any:
    try:
        check_transport(text)
        if text.startswith(TRANSPORTS):
            raise ValueError(f"{text!r}: an image reference is asked for here; pybuild copy "
                             "SOURCE DESTINATION copies between transports")
        return parse_image_ref(text)
    except ValueError as exc:  # InvalidReference is a ValueError
        raise click.BadParameter(str(exc)) from exc


def _storage_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--storage", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Storage directory (default: $PYBUILD_STORAGE or the XDG data dir).")(fn)


def _json_errors(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """``--json``: a failure ends with an ``error`` event on stdout too (the root group
    writes it); eager, so a bad value of another option is reported that way as well."""
    if value:
        ctx.meta[JSON_ERRORS] = True
    return value


def _transfer_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options: list[Callable[[Any], Any]] = [
        click.option("--jobs", "-j", type=click.IntRange(1, 64), default=DEFAULT_JOBS, show_default=True,
                     help="Blobs transferred at once."),
        click.option("--ranges", type=click.IntRange(1, 64), default=TransferOptions().window,
                     show_default=True,
                     help="Range requests in flight per blob (runs of missing pieces, or "
                          "parts of a blob over 64 MiB)."),
        click.option("--platform", default=None, help="os/arch[/variant] to pick from an index."),
        click.option("--all-platforms", is_flag=True, help="Copy the whole index."),
        click.option("--json", "json_events", is_flag=True, is_eager=True, callback=_json_errors,
                     help="One JSON event per line on stdout (a failure ends with an error event)."),
        click.option("--quiet", "-q", is_flag=True, help="No progress output."),
        click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="CA certificate to trust for registries."),
        click.option("--tls-verify", type=click.BOOL, default=True, show_default=True,
                     help="Verify registry certificates (--tls-verify=false to skip)."),
        click.option("--insecure", multiple=True, metavar="HOST",
                     help="Allow plain HTTP / unverified TLS for HOST (repeatable)."),
        _storage_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _client_options(kw: dict[str, Any], progress: Progress | None = None) -> ClientOptions:
    from .remote import ClientOptions

    insecure = set(kw["insecure"])
    insecure.update(h for h in os.environ.get("PYBUILD_INSECURE_REGISTRIES", "").split(",") if h)
    return ClientOptions(ca_cert=kw["ca_cert"], tls_verify=kw["tls_verify"], insecure=frozenset(insecure),
                         notice=progress.message if progress is not None else None)


async def _copy(src: Endpoint, dst: Endpoint, kw: dict[str, Any]) -> None:
    from .copy import CopyOptions, copy_image
    from .image_store import ImageStore
    from .progress import Progress
    from .remote import RegistryClient

    progress = Progress.auto(json_events=kw["json_events"], quiet=kw["quiet"])
    options = CopyOptions(platform=kw["platform"], all_platforms=kw["all_platforms"], jobs=kw["jobs"],
                          transfer=TransferOptions(window=kw["ranges"]))
    async with await ImageStore.open(kw["storage"]) as images, RegistryClient(_client_options(kw, progress)) as client:
        result = await copy_image(src, dst, images, client, progress, options)
    summary = progress.close()
    if kw["json_events"]:
        print(json.dumps({"event": "result", "source": str(src), "destination": str(dst),
                          "digest": str(result.digest), "mediaType": result.media_type,
                          "blobs": result.blobs, **summary}))
    elif not kw["quiet"]:
        click.echo(f"{dst}: digest {result.digest}", err=True)


@click.command()
@click.argument("ref")
@_transfer_options
def pull(ref: str, **kw: Any) -> None:
    """Pull image REF from its registry into the local store (only what is missing)."""
    image = _ref(ref)
    _run(_copy(Endpoint("registry", image), Endpoint("local", image), kw))


@click.command()
@click.argument("ref")
@click.argument("destination", required=False)
@_transfer_options
def push(ref: str, destination: str | None, **kw: Any) -> None:
    """Push local image REF to its registry (or to DESTINATION, any transport)."""
    image = _ref(ref)
    try:
        dst = parse_endpoint(destination) if destination else Endpoint("registry", image)
    except ValueError as exc:  # InvalidReference is a ValueError
        raise click.BadParameter(str(exc)) from exc
    _run(_copy(Endpoint("local", image), dst, kw))


@click.command()
@click.argument("source")
@click.argument("destination")
@_transfer_options
def copy(source: str, destination: str, **kw: Any) -> None:
    """Copy an image: docker://REF (or bare REF), local:REF, oci:DIR[:TAG],
    oci-archive:FILE[:TAG], docker-archive:FILE[:REF]."""
    try:
        src, dst = parse_endpoint(source), parse_endpoint(destination)
    except ValueError as exc:  # InvalidReference is a ValueError
        raise click.BadParameter(str(exc)) from exc
    _run(_copy(src, dst, kw))


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove an image ID's every name.")
@_storage_option
def rmi(refs: tuple[str, ...], force: bool, storage: Path | None) -> None:
    """Remove local images, by name or ID (their blobs are reclaimed by ``pybuild storage
    gc``). Prints ``Untagged: NAME`` for each name removed, as docker rmi does (nothing is
    ``Deleted:`` yet: that is ``pybuild storage gc``'s work)."""

    from .image_store import ImageStore
    from .refs import familiar  # the names as pybuild images shows them, as docker

    async def run() -> list[str]:
        missing = []
        async with await ImageStore.open(storage) as store:
            for ref in refs:
                if await store.remove(name := str(_ref(ref))):
                    click.echo(f"Untagged: {familiar(name)}")
                    continue
                # An ID (as Docker: the name first); several names only with -f, as Docker
                found = await store.by_id(ref)
                names = [image.ref for image in found]
                if len({image.digest for image in found}) > 1:
                    raise click.ClickException(
                        f"{ref} is the start of several images' IDs; give more of it "
                        "(pybuild images --no-trunc)")
                if len(names) > 1 and not force:
                    raise click.ClickException(
                        f"image {ref} has several names ({', '.join(names)}): remove them by "
                        "name, or all of them with -f")
                for name in names:
                    if await store.remove(name):
                        click.echo(f"Untagged: {familiar(name)}")
                if not names:
                    missing.append(ref)
        return missing

    missing = _run(run())
    if missing:
        raise click.ClickException(f"no such local image: {', '.join(missing)} (see pybuild images)")


@click.command()
@click.argument("server")
@click.option("--username", "-u", default=None)
@click.option("--password", "-p", default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--tls-verify", type=click.BOOL, default=True)
@click.option("--insecure", multiple=True, metavar="HOST")
def login(server: str, username: str | None, password: str | None, password_stdin: bool, **kw: Any) -> None:
    """Check credentials against SERVER and save them in Docker's config.json."""
    from .auth import Credentials, store_credentials
    from .docker_config import server_host
    from .remote import ClientOptions, RegistryClient

    server = server_host(server)  # `https://reg:5000/` names reg:5000, as for docker login

    if (username is None or (password is None and not password_stdin)) and not sys.stdin.isatty():
        # As docker login: a prompt read from a pipe would echo, and mix with the password.
        raise click.UsageError("cannot ask for the user name or password: standard input is not a terminal; "
                               "give -u USER and --password-stdin (echo \"$PASSWORD\" | pybuild login "
                               f"{server} -u USER --password-stdin)")
    if username is None:
        username = click.prompt("Username")
    if password_stdin:
        # One line end, LF or CRLF, as docker login strips it (`echo` adds one; a secret
        # file written on Windows ends in CRLF, which sys.stdin keeps).
        password = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    elif password is None:
        password = click.prompt("Password", hide_input=True)
    if not password:
        # As docker login ("Password Required"): in CI an unset secret gives an empty
        # one, which saved would make every later pull fail as unauthorized.
        raise click.ClickException(
            "the password is empty (is the variable that holds it set in this job?); give it "
            f"on standard input: echo \"$PASSWORD\" | pybuild login {server} -u USER "
            "--password-stdin")
    creds = Credentials(username, password, "the password given to pybuild login")
    host = _ref(f"{server}/x").host

    async def check() -> None:
        options = _client_options(kw)
        options = ClientOptions(options.ca_cert, options.tls_verify, options.insecure,
                                credentials={_ref(f"{server}/x").api_host: creds})
        async with RegistryClient(options) as client:
            await client.ping(_ref(f"{server}/x").api_host)

    _run(check())
    path = _run(asyncio.to_thread(store_credentials, host, creds))
    click.echo(f"Login Succeeded (credentials saved in {path})")


@click.command()
@click.argument("server")
def logout(server: str) -> None:
    """Forget the credentials saved for SERVER (none saved: says so, and succeeds, as
    ``docker logout`` does, so that a CI job's clean-up step does not fail)."""
    from .auth import erase_credentials
    from .docker_config import server_host

    server = server_host(server)
    host = _ref(f"{server}/x").host
    if not _run(asyncio.to_thread(erase_credentials, host)):
        click.echo(f"Not logged in to {server}")
        return
    click.echo(f"Removed login credentials for {server}")


COMMANDS = (pull, push, copy, rmi, login, logout)
