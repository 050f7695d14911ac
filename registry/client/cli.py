"""``pybuild pull/push/copy/images/rmi/login/logout``: thin click commands over the client.

Registry access flags shared by the transfer commands: ``--ca-cert FILE`` (trust this CA),
``--cert-dir DIR`` (CAs and client certificates, instead of the registry's certs.d directory),
``--tls-verify=false`` (do not verify certificates; plain HTTP allowed), ``--insecure HOST`` (repeatable;
plain HTTP allowed; also ``PYBUILD_INSECURE_REGISTRIES=host1,host2``). Loopback registries
are always allowed over plain HTTP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..cli import JSON_ERRORS
from ..errors import RegistryError
from .endpoints import TRANSPORTS, Endpoint, check_transport, parse_endpoint
from .errors import ClientError
from .refs import parse_image_ref
from .transfer import DEFAULT_JOBS, TransferOptions

if TYPE_CHECKING:
    from .image_store import ImageStore
    from .progress import Progress
    from .remote import ClientOptions

# The image store, the transfer machinery and the HTTP client are imported by the
# commands that use them: `pybuild images` does not wait for what `pull` needs. So are
# asyncio and the store's errors (sqlite3): `pybuild pull --help`, or a command line
# click refuses, is answered without them (a test checks what each command imports).

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
    import asyncio

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
    import asyncio

    from cas.errors import CasError, storage_error

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
        click.option("--cert-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                     default=None, help="Use the certificates in DIR (*.crt CAs, *.cert and *.key "
                                        "client pairs) instead of the registry's certs.d directory."),
        click.option("--tls-verify", type=click.BOOL, default=True, show_default=True,
                     help="Verify registry certificates (--tls-verify=false to skip, and allow "
                          "plain HTTP, as podman)."),
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
    return ClientOptions(ca_cert=kw["ca_cert"], cert_dir=kw["cert_dir"], tls_verify=kw["tls_verify"],
                         insecure=frozenset(insecure),
                         notice=progress.message if progress is not None else None)


async def _copy(src: Endpoint, dst: Endpoint, kw: dict[str, Any]) -> None:
    from .copy import CopyOptions, copy_image
    from .progress import Progress
    from .remote import RegistryClient

    progress = Progress.auto(json_events=kw["json_events"], quiet=kw["quiet"])
    options = CopyOptions(platform=kw["platform"], all_platforms=kw["all_platforms"], jobs=kw["jobs"],
                          transfer=TransferOptions(window=kw["ranges"]))
    async with _copy_store(src, dst, kw["storage"], progress) as images, \
            RegistryClient(_client_options(kw, progress)) as client:
        result = await copy_image(src, dst, images, client, progress, options)
    summary = progress.close()
    if kw["json_events"]:
        print(json.dumps({"event": "result", "source": str(src), "destination": str(dst),
                          "digest": str(result.digest), "mediaType": result.media_type,
                          "blobs": result.blobs, **summary}))
    elif not kw["quiet"]:
        click.echo(f"{dst}: digest {result.digest}", err=True)


@contextlib.asynccontextmanager
async def _copy_store(src: Endpoint, dst: Endpoint, storage: Path | None,
                      progress: Progress) -> AsyncIterator[ImageStore]:
    """The local store a copy from ``src`` to ``dst`` goes through. A copy from a registry
    or an OCI layout to a registry streams, as skopeo's does: it needs the store only to
    reuse what that holds, so a store not made yet is not made (a read-only HOME), and
    one that cannot be opened (its S3 packs unreachable) is said and left out. A
    throwaway store in a temporary directory stands in for it then."""
    import asyncio

    from cas.errors import CasError
    from cas.location import default_storage_dir

    from .image_store import ImageStore

    streams = dst.kind == "registry" and src.kind in ("registry", "oci", "oci-archive")
    if not streams:
        # Out of the store (push, export): it is only read, so a read-only one will do.
        reading = src.kind == "local" and dst.kind != "local"
        async with await ImageStore.open(storage, reading=reading) as needed:
            yield needed
        return
    root = storage if storage is not None else default_storage_dir(check=False)
    images: ImageStore | None = None
    if await asyncio.to_thread(root.is_dir):
        try:
            images = await ImageStore.open(root)
        except (CasError, OSError) as exc:
            progress.message(f"the local store {root} cannot be used ({exc}); "
                             "copying without it (nothing in it is reused)")
    if images is not None:
        async with images:
            yield images
        return
    import shutil
    import tempfile

    scratch = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="pybuild-copy-"))
    try:
        async with await ImageStore.open(scratch) as throwaway:
            yield throwaway
    finally:
        await asyncio.to_thread(shutil.rmtree, scratch, True)


def _content_trust(fn: Callable[..., Any]) -> Callable[..., Any]:
    """docker pull/push's ``--disable-content-trust`` (true unless DOCKER_CONTENT_TRUST is
    set): accepted; asking for trust (``=false``) is refused, as pybuild verifies no
    Notary signatures."""
    return click.option("--disable-content-trust", "disable_content_trust", is_flag=True,
                        default=True, hidden=True)(fn)


def _no_content_trust(kw: dict[str, Any]) -> None:
    if not kw.pop("disable_content_trust", True):
        raise click.UsageError("content trust (Notary signatures) is not supported: leave out "
                               "--disable-content-trust=false; pin images by digest "
                               "(NAME@sha256:...) instead")


async def _copy_all_tags(text: str, pulling: bool, kw: dict[str, Any]) -> None:
    """``--all-tags``: each tag of repository ``text`` copied as one tag is (all_tags)."""
    from .all_tags import copy_tags, local_tags, registry_tags, repository

    repo = repository(text)
    tags = await (registry_tags(repo, _client_options(kw)) if pulling
                  else local_tags(repo, kw["storage"]))
    remote, local = (lambda tag: Endpoint("registry", repo.with_tag(tag))), \
        (lambda tag: Endpoint("local", repo.with_tag(tag)))
    await copy_tags("pull" if pulling else "push", repo, tags, remote if pulling else local,
                    local if pulling else remote, lambda src, dst: _copy(src, dst, kw))


def _all_tags_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--all-tags", "-a", "all_tags", is_flag=True,
                        help="Every tag of the repository REF names (no tag), as docker's "
                             "-a.")(fn)


@click.command()
@click.argument("ref")
@_all_tags_option
@_transfer_options
@_content_trust
def pull(ref: str, all_tags: bool, **kw: Any) -> None:
    """Pull image REF from its registry into the local store (only what is missing)."""
    _no_content_trust(kw)
    if all_tags:
        _run(_copy_all_tags(ref, True, kw))
        return
    image = _ref(ref)
    _run(_copy(Endpoint("registry", image), Endpoint("local", image), kw))


@click.command()
@click.argument("ref")
@click.argument("destination", required=False)
@_all_tags_option
@_transfer_options
@_content_trust
def push(ref: str, destination: str | None, all_tags: bool, **kw: Any) -> None:
    """Push local image REF to its registry (or to DESTINATION, any transport)."""
    _no_content_trust(kw)
    if all_tags:
        if destination is not None:
            raise click.UsageError("--all-tags pushes each tag to the registry its name "
                                   "says: give no DESTINATION (or copy each tag to it)")
        _run(_copy_all_tags(ref, False, kw))
        return
    image = _ref(ref)
    try:
        dst = parse_endpoint(destination) if destination else Endpoint("registry", image)
    except ValueError as exc:  # InvalidReference is a ValueError
        raise click.BadParameter(str(exc)) from exc
    _run(_copy(Endpoint("local", image), dst, kw))


@click.command()
@click.argument("source")
@click.argument("destination")
@click.option("--all-tags", "-a", "all_tags", is_flag=True,
              help="Every tag of the registry repository SOURCE names (no tag), each to the "
                   "same tag of the repository DESTINATION, as skopeo sync.")
@click.option("--all-repositories", "all_repositories", is_flag=True,
              help="Every tag of every repository the registry SOURCE (HOST[/NAMESPACE]) "
                   "lists in its catalog, each to the same name under DESTINATION "
                   "(HOST[/NAMESPACE]).")
@_transfer_options
def copy(source: str, destination: str, all_tags: bool, all_repositories: bool,
         **kw: Any) -> None:
    """Copy an image: docker://REF (or bare REF), local:REF, oci:DIR[:TAG],
    oci-archive:FILE[:TAG], docker-archive:FILE[:REF]."""
    def copy_one(src: Endpoint, dst: Endpoint) -> Awaitable[None]:
        return _copy(src, dst, kw)

    if all_tags and all_repositories:
        raise click.UsageError("--all-repositories copies every tag of each repository: "
                               "give it alone, without --all-tags")
    if all_tags or all_repositories:
        from . import all_tags as every

        run = every.copy_registry if all_repositories else every.copy_repository
        _run(run(source, destination, _client_options(kw), copy_one))
        return
    try:
        src, dst = parse_endpoint(source), parse_endpoint(destination)
    except ValueError as exc:  # InvalidReference is a ValueError
        raise click.BadParameter(str(exc)) from exc
    _run(_copy(src, dst, kw))


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove an image ID's every name.")
@click.option("--no-prune", "no_prune", is_flag=True,
              help="Accepted for docker's sake: rmi removes names only, never other images.")
@_storage_option
def rmi(refs: tuple[str, ...], force: bool, no_prune: bool, storage: Path | None) -> None:
    """Remove local images, by name (``NAME[:TAG]``, ``NAME@DIGEST``) or ID (their blobs
    are reclaimed by ``pybuild storage gc``). Prints ``Untagged: NAME`` for each name
    removed, as docker rmi does (nothing is ``Deleted:`` yet: that is ``pybuild storage
    gc``'s work). As docker rmi, a failure for one image does not stop the others; the
    command then fails naming each."""

    from .image_store import ImageStore
    from .refs import familiar  # the names as pybuild images shows them, as docker

    async def remove(store: ImageStore, ref: str) -> str | None:
        """Remove what ``ref`` names; the error for it, if any."""
        parsed = _ref(ref)
        if await store.remove(name := str(parsed)):
            if parsed.digest is not None:  # a tag may name it still: not by digest any more
                await store.untag_digest(name)
            click.echo(f"Untagged: {familiar(name)}")
            return None
        if parsed.digest is not None:
            # NAME@DIGEST of an image held by tag: the reference by digest that a pull or
            # push gives it in docker (its RepoDigests). As docker rmi, only that reference
            # goes (the tags stay), once: then it is no such image.
            if any(image.digest == parsed.digest and _ref(image.ref).repository == parsed.repository
                   for image in await store.list()) and await store.untag_digest(name):
                click.echo(f"Untagged: {familiar(name)}")
                return None
            return f"no such local image: {ref} (see pybuild images --no-trunc)"
        # An ID (as Docker: the name first); several names only with -f, as Docker
        found = await store.by_id(ref)
        names = [image.ref for image in found]
        if len({image.digest for image in found}) > 1:
            return (f"{ref} is the start of several images' IDs; give more of it "
                    "(pybuild images --no-trunc)")
        if not names:
            return f"no such local image: {ref} (see pybuild images)"
        if not force and not _single_reference(names):
            # docker: "unable to delete ID (must be forced) - image is referenced in
            # multiple repositories"; one tag and references by digest in one repository
            # are removed without -f
            return (f"image {ref} has several names ({', '.join(names)}): remove them by "
                    "name, or all of them with -f")
        for name in names:
            if await store.remove(name):
                click.echo(f"Untagged: {familiar(name)}")
        return None

    async def run() -> list[str]:
        async with await ImageStore.open(storage) as store:
            return [error for ref in refs if (error := await remove(store, ref)) is not None]

    errors = _run(run())
    if errors:
        raise click.ClickException("; ".join(errors))


def _single_reference(names: list[str]) -> bool:
    """docker rmi's ``isSingleReference``: the names are of one repository, and at most
    one of them is a tag (the others are references by digest)."""
    parsed = [_ref(name) for name in names]
    return (len({ref.repository for ref in parsed}) == 1
            and sum(ref.digest is None for ref in parsed) <= 1)


@click.command()
@click.argument("server")
@click.option("--username", "-u", default=None)
@click.option("--password", "-p", default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--cert-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None)
@click.option("--tls-verify", type=click.BOOL, default=True)
@click.option("--insecure", multiple=True, metavar="HOST")
def login(server: str, username: str | None, password: str | None, password_stdin: bool, **kw: Any) -> None:
    """Check credentials against SERVER and save them in Docker's config.json."""
    from .auth import Credentials, store_credentials
    from .docker_config import server_host
    from .remote import RegistryClient

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
    import asyncio

    creds = Credentials(username, password, "the password given to pybuild login")
    host = _ref(f"{server}/x").host

    async def check() -> None:
        options = _client_options(kw)
        options = dataclasses.replace(options, credentials={_ref(f"{server}/x").api_host: creds})
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
    import asyncio

    from .auth import erase_credentials
    from .docker_config import server_host

    server = server_host(server)
    host = _ref(f"{server}/x").host
    if not _run(asyncio.to_thread(erase_credentials, host)):
        click.echo(f"Not logged in to {server}")
        return
    click.echo(f"Removed login credentials for {server}")


COMMANDS = (pull, push, copy, rmi, login, logout)
