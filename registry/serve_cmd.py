"""``pybuild serve``: run the registry (see docs/registry.md for every setting)."""

from __future__ import annotations

import errno
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

# The server (aiohttp, the store, the token machinery: ~0.3 s of imports) is imported
# when the command runs, not when it is only named: `pybuild serve --help` and a
# refused command line are answered without it.
if TYPE_CHECKING:
    import asyncio
    import ssl

    from aiohttp import web

    from .server import ServerConfig
    from .server.state import Registry

log = logging.getLogger("pybuild.registry")

__all__ = ["run_server", "serve"]


def new_event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """uvloop when asked or (``auto``) when installed: small requests (manifest GETs) are
    ~25% faster on it; blobs still go out with sendfile (see blobs.py)."""
    import asyncio

    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise click.ClickException(
                    "event loop 'uvloop' requested but uvloop is not installed: "
                    "pip install uvloop, or use --event-loop asyncio"
                ) from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def refuse_distribution_tree(storage: Path) -> None:
    """Refuse a storage directory that holds CNCF Distribution's tree and none of pybuild's
    own files: the root directory of a Distribution config.yml pybuild was started with as
    it is. pybuild does not read that tree, so it would serve an empty registry (every
    image gone, to its clients) and add its files beside Distribution's."""
    if not (storage / "docker" / "registry" / "v2").is_dir():
        return
    if any((storage / name).exists() for name in ("packs", "ingests", "registry.db", "meta.db")):
        return  # pybuild already keeps its own storage here, beside the old tree
    raise click.ClickException(
        f"{storage} holds a CNCF Distribution registry (docker/registry/v2), which pybuild "
        "does not read: it would serve none of those images. Give pybuild an empty storage "
        "directory (--storage, or storage.filesystem.rootdirectory) and copy the images from "
        "the running Distribution: pybuild copy --all-repositories --all-platforms OLD-HOST "
        "NEW-HOST (docs/deployment.md, \"Moving a registry to pybuild\")")


def run_server(config: ServerConfig, reload: Callable[[], ServerConfig] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``shutdown_timeout`` to finish.
    On SIGHUP the configuration ``reload()`` returns is applied (see server.reload)."""
    import asyncio

    from cas.location import default_storage_dir
    from cas.pg_db import redact

    from .server import make_app
    from .server.accesslog import AccessLogSink, BadRequestFilter, JsonAccessLogger
    from .server.audit import install_audit_handler
    from .server.listen import listen_url
    from .server.tls import server_context

    storage = config.storage or default_storage_dir()
    refuse_distribution_tree(storage)
    host, port = config.host_port
    ssl_context = None
    if config.tls_cert is not None and config.tls_key is not None:
        ssl_context = server_context(config.tls_cert, config.tls_key, config.tls_clientcas, config.tls_minimum)
    sink = AccessLogSink(sys.stderr) if config.log_access else None
    JsonAccessLogger.sink = sink
    logging.basicConfig(
        level={"warn": "WARNING"}.get(config.log_level.lower(), config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, BadRequestFilter) for f in server_log.filters):
        server_log.addFilter(BadRequestFilter())
    if config.log_audit:
        install_audit_handler(sys.stderr)
    app = make_app(config, storage=storage)
    if sink is not None:

        async def flush_log(app: web.Application) -> None:
            sink.flush()

        app.on_cleanup.append(flush_log)
    scheme = "https" if ssl_context else "http"

    def announce(runner: web.BaseRunner) -> None:
        click.echo(
            f"pybuild registry listening on {listen_url(scheme, host, runner)} (storage {storage}"
            f"{', metadata ' + redact(config.database) if config.database else ''}"
            f"{', read-only' if config.read_only else ''}"
            f"{', auth ' + str(config.auth_htpasswd) if config.auth_htpasswd else ''})",
            err=True,
        )

    access_log = logging.getLogger("pybuild.registry.access") if sink else None
    loop = new_event_loop(config.event_loop)
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            _serve(config, app, host, port, ssl_context, access_log, announce, reload)
        )
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(
    config: ServerConfig,
    app: web.Application,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    access_log: logging.Logger | None,
    announce: Callable[[web.BaseRunner], None],
    reload: Callable[[], ServerConfig] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM, then shut down gracefully.

    aiohttp's own shutdown stops reading from connections at once, which would cut off
    uploads still sending their body; so: close the listening socket first, let the
    requests in flight finish (up to ``shutdown_timeout``), only then clean up.
    """
    import asyncio

    from aiohttp import web

    from .server.accesslog import JsonAccessLogger
    from .server.debug import start_debug_server
    from .server.limits import ConnectionGuard
    from .server.listen import listen_site
    from .server.parse_errors import install as answer_parse_errors
    from .server.state import REGISTRY

    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log_class=JsonAccessLogger,
        access_log=access_log,
        # Requests in flight were given shutdown_timeout already (reg.drain, below): the
        # runner only lets responses already handed over finish being written, then
        # cancels what is left, rather than waiting that long a second time.
        shutdown_timeout=min(config.shutdown_timeout, _AFTER_DRAIN),
        # Idle kept-alive connections are closed after this; it also bounds the time a
        # kept-alive connection takes to send its next request head.
        keepalive_timeout=config.http_idle_timeout or float(1 << 31),  # 0: none
    )
    await runner.setup()
    debug_runner: web.AppRunner | None = None
    assert runner.server is not None
    guard = ConnectionGuard(
        max_connections=_connection_bound(config.http_max_connections),
        max_per_client=config.http_max_connections_per_client,
        header_timeout=config.http_header_timeout,
        log=app[REGISTRY].limit_log,
    )
    guard.install(runner.server)
    answer_parse_errors(runner.server)
    try:
        _on_sighup(app[REGISTRY], reload)
        site = listen_site(runner, host, port, ssl_context, config.http_header_timeout, guard)
        await site.start()
        debug_runner = await start_debug_server(app, config, guard)
        announce(runner)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await site.stop()
        reg = app[REGISTRY]
        if reg.inflight:
            log.info("shutting down: waiting for %d request(s) in flight", reg.inflight)
        if not await reg.drain(config.shutdown_timeout):
            log.warning("shutdown timeout: cancelling %d request(s)", reg.inflight)
    finally:
        if debug_runner is not None:
            await debug_runner.cleanup()
        await runner.cleanup()


def _on_sighup(reg: Registry, reload: Callable[[], ServerConfig] | None) -> None:
    """Reload the configuration on SIGHUP (installed before the socket opens, so a
    SIGHUP never meets the default action, which is to exit)."""
    import asyncio

    from .server.reload import reload_config

    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[bool]] = set()

    def hangup() -> None:
        if reload is None:
            log.info("SIGHUP: no configuration to reload")
            return
        task = loop.create_task(reload_config(reg, reload))
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)


_AFTER_DRAIN = 1.0  # seconds the runner waits at shutdown, once the drain is over

# What the store holds open at rest (its databases, logs; ~30 measured), and what one
# connection may hold: its socket, the pack it serves and, sending it from a thread
# (uvloop), a duplicate of each.
_BASE_FILES = 64
_FILES_PER_CONNECTION = 4


def _connection_bound(configured: int) -> int:
    """Raise the open-files soft limit to the hard limit (every connection is a
    descriptor), and keep the connection bound below it: a server out of descriptors
    cannot even accept, and a pull that cannot open its pack is cut off mid-body."""
    from .server.limits import raise_open_files_limit

    soft, _ = raise_open_files_limit()
    room = max((soft - _BASE_FILES) // _FILES_PER_CONNECTION, 1)
    if not configured or configured > room:
        log.warning(
            "open files limit is %d: serving at most %d connections (http.max_connections "
            "is %s); raise the limit (ulimit -n, LimitNOFILE=) to serve more",
            soft, room, configured or "unbounded",
        )
        return room
    return configured


@click.command("serve")
@click.option("--addr", metavar="HOST:PORT", help="Listen address [default: 127.0.0.1:5000].")
@click.option(
    "--storage",
    type=click.Path(file_okay=False, path_type=Path),
    help="Storage directory [default: $PYBUILD_STORAGE, else ~/.local/share/pybuild].",
)
@click.option(
    "--packs",
    metavar="s3://HOST[:PORT]/BUCKET[/PREFIX]",
    help="Keep the packs in this S3 bucket (recorded in the storage directory; see docs/storage.md).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="YAML or TOML config file [default: $PYBUILD_CONFIG].",
)
@click.option(
    "--htpasswd",
    # Not exists=True: the server's own check names the fix (htpasswd -Bc FILE USER).
    type=click.Path(path_type=Path),
    help="Require basic auth against this htpasswd file (bcrypt entries).",
)
@click.option("--realm", help="Basic-auth realm [default: pybuild-registry].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--read-only", is_flag=True, default=None, help="Refuse pushes and deletes.")
@click.option(
    "--event-loop",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    help="Event loop [default: auto = uvloop if installed].",
)
def serve(
    addr: str | None,
    storage: Path | None,
    packs: str | None,
    config_file: Path | None,
    htpasswd: Path | None,
    realm: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    read_only: bool | None,
    event_loop: str | None,
) -> None:
    """Run the OCI registry.

    Settings come from (later wins): defaults, the config file, PYBUILD_* environment
    variables, these flags. SIGHUP reloads them (and the htpasswd file) without a
    restart; a changed htpasswd file is also picked up by itself.
    """
    from .server import ConfigError, load_config

    flags = {
        "addr": addr,
        "storage": storage,
        "packs": packs,
        "auth_htpasswd": htpasswd,
        "auth_realm": realm,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "read_only": read_only,
        "event_loop": event_loop,
    }
    try:
        config = load_config(config_file, flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        run_server(config, reload=lambda: load_config(config_file, flags))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            # Distribution says only "bind: address already in use"; name who and the fix.
            raise click.ClickException(
                f"cannot serve: {exc}: another process listens there (on Debian, installing "
                "docker-registry starts its service on port 5000); stop it (systemctl stop "
                "docker-registry) or listen elsewhere (--addr 127.0.0.1:5001, or addr / "
                "http.debug.addr in the configuration)") from exc
        raise click.ClickException(f"cannot serve: {exc}") from exc
    except ValueError as exc:
        raise click.ClickException(f"cannot serve: {exc}") from exc
