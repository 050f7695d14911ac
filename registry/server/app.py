"""The registry's aiohttp application: middleware, lifecycle and the fixed routes.

``make_app(config)`` opens the ``cas`` store and ``registry.db`` in a ``cleanup_ctx``
(closed on shutdown), runs the upload-expiry loop in the background and serves::

    *    /v2/{tail}                routes.dispatch: the whole Distribution API (``/v2/``
                                   answers 200, or 401 when auth is on)
    GET  /healthz                  liveness and storage check (no auth)
    GET  /metrics                  Prometheus metrics (no auth), only with
                                   http.debug.prometheus.on_registry_port: they belong
                                   on the debug server (debug.py)
    GET, POST /token               the built-in token server (auth.token.issue), else 404

One middleware does, in order: refuse path tricks on ``/v2`` paths, authenticate, refuse
writes in read-only mode, run the handler, render :class:`RegistryError` (and ``cas``
errors, mapped at this boundary) as the spec's JSON, and hand the finished request to
operations.after_request (metrics, notification events, audit log).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from aiohttp.typedefs import Handler
from yarl import URL

from cas import (
    BlobUnknown,
    CasError,
    DigestMismatch,
    InvalidDigest,
    InvalidRange,
    SizeMismatch,
    StorageFull,
    StorageNotWritable,
    Store,
    StoreClosed,
    StoreConfig,
    UnsupportedDigestAlgorithm,
    open_store,
)
from cas.location import default_storage_dir
from cas.pg_db import DatabaseUnavailable
from cas.s3_location import ObjectStorageUnavailable

from ..errors import (
    BLOB_UNKNOWN,
    DIGEST_INVALID,
    RANGE_INVALID,
    SIZE_INVALID,
    UNAVAILABLE,
    UNKNOWN,
    UNSUPPORTED,
    RegistryError,
    encode_errors,
)
from ..names import check_raw_path
from .auth import Authorizer, BasicAuth, Htpasswd
from .config import ServerConfig
from .debug import metrics_response
from .expect import close_unless_continued, defer_continue
from .health import check_health, health_context
from .httputil import ClientGone, check_transfer_coding, origin_form
from .metadata import RegistryMetadata
from .metadata_open import open_metadata
from .operations import after_request, notifications_lifecycle
from .proxy import proxy_context
from .retention import retention_lifecycle
from .routes import WRITE_METHODS, dispatch
from .state import (
    BYTES_SENT,
    REGISTRY,
    USER,
    BlobStore,
    ManifestCache,
    Registry,
)
from .token_server import build_token_auth, token_endpoint
from .tokens import token_auth_configured
from .upload_locks import InProcessUploadLocks, UploadLocks
from .upload_locks_file import FileUploadLocks
from .upload_locks_pg import PgUploadLocks
from .uploads import UPLOAD_READ_BUFFER

__all__ = ["make_app"]

log = logging.getLogger("pybuild.registry")

_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
# What a client learns of an unexpected failure; the details go to the server's log only.
INTERNAL_ERROR = "internal error: the registry's log has the details"
# How long a client should wait before retrying while the metadata database is down.
DATABASE_RETRY_AFTER = "5"


def _cas_error(exc: CasError) -> RegistryError:
    """Translate a storage error into the spec's error code (the HTTP boundary)."""
    if isinstance(exc, BlobUnknown):
        return BLOB_UNKNOWN(str(exc))
    if isinstance(exc, (InvalidDigest, UnsupportedDigestAlgorithm, DigestMismatch)):
        return DIGEST_INVALID(str(exc))
    if isinstance(exc, SizeMismatch):
        return SIZE_INVALID(str(exc))
    if isinstance(exc, InvalidRange):
        return RANGE_INVALID(str(exc))
    # The storage errors' own words name the server's paths and advise its operator
    # (--storage): the log has them; a client learns what happened and what to do.
    if isinstance(exc, StorageFull):
        place = "its storage" if os.path.isabs(exc.where) else exc.where
        return UNAVAILABLE(
            f"storage full: the registry has no room left in {place} ({exc.cause}); "
            "nothing partial was kept: try again once its operator has freed space",
            status=507)
    if isinstance(exc, DatabaseUnavailable):  # lost or refused connection: retry, fail over
        return UNAVAILABLE(f"the metadata database is unreachable: {exc}", status=503,
                           headers={"Retry-After": DATABASE_RETRY_AFTER})
    if isinstance(exc, ObjectStorageUnavailable):  # the bucket's endpoint: as the database
        return UNAVAILABLE("the registry's object storage is unreachable: try again later",
                           status=503,
                           headers={"Retry-After": DATABASE_RETRY_AFTER})
    if isinstance(exc, StorageNotWritable):  # a read-only disk
        return UNAVAILABLE(
            f"the registry's storage is not writable ({exc.cause}); nothing was kept: "
            "try again later, or tell its operator", status=503)
    if isinstance(exc, StoreClosed):  # shutting down
        return UNAVAILABLE("the registry is shutting down: try again", status=503)
    return UNKNOWN(INTERNAL_ERROR)


def _out_of_files(code: int) -> str:
    if code == errno.ENFILE:
        return "too many open files on this machine (fs.file-max is reached); raise it (sysctl -w fs.file-max=N)"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (f"too many open files: this process may have {soft} open at once (ulimit -n, hard limit "
            f"{hard}); raise it (ulimit -n, LimitNOFILE= for a service) and restart, or lower "
            "http.max_connections")


def _client_gone(request: web.Request, exc: ConnectionError) -> bool:
    """Whether ``exc`` says the client hung up, rather than an upstream refusing us."""
    transport = request.transport
    return (isinstance(exc, (ClientGone, ClientConnectionResetError)) or transport is None
            or transport.is_closing())


def _error_response(err: RegistryError) -> web.Response:
    headers = {**_API_VERSION, **err.headers}
    headers.pop("Content-Length", None)  # the body is the error document
    body = b"" if err.status in (304,) else encode_errors(*err.all())
    return web.Response(
        status=err.status, body=body, content_type="application/json", headers=headers
    )


@web.middleware
async def _registry_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    started = time.perf_counter()
    reg = request.app[REGISTRY]
    status = 500
    resp: web.StreamResponse | None = None
    answered = False  # the handler returned its response (no error answer made here)
    reg.request_started()
    try:
        try:
            path = request.raw_path
            absolute = origin_form(path)
            if absolute is not None:
                # Served as the origin form it stands for, under the host it names: the
                # handlers, the access log and the audit read that path, never the URL.
                path, host = absolute
                url = URL(path, encoded=True)
                request = (request.clone(rel_url=url, host=host) if host
                           else request.clone(rel_url=url))
            # Routing matches the decoded, normalised path; everything here reads the raw
            # one. They agree only for a target without escapes or dot segments, so
            # anything else is refused before it can reach a handler.
            if not path.startswith("/"):
                raise UNSUPPORTED(
                    f"request target {path[:64]!r} is not a path: send the path only "
                    "(origin form, e.g. 'GET /v2/ HTTP/1.1')",
                    status=400,
                )
            check_raw_path(path)
            check_transfer_coding(request)
            check_health(request)  # health.file: 503 before anything else, as Distribution
            if path.startswith("/v2"):
                auth = reg.auth
                if auth is not None:
                    request[USER] = await auth.authorize(request)
                if reg.config.read_only and request.method in WRITE_METHODS:
                    raise UNSUPPORTED(
                        "this registry is read-only: pushes and deletes are disabled"
                    )
            resp = await handler(request)
            if not resp.prepared and "Docker-Distribution-API-Version" not in resp.headers:
                resp.headers.update(_API_VERSION)
        except RegistryError as err:
            if err.status >= 500:
                log.error("%s %s: %s", request.method, request.path, err)
            resp = _error_response(err)
        except CasError as exc:
            mapped = _cas_error(exc)
            if mapped.status >= 500:
                log.error("%s %s: storage error: %r", request.method, request.path, exc)
            resp = _error_response(mapped)
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # client closed the connection
            raise
        except ConnectionError as exc:
            if not _client_gone(request, exc):  # an upstream's (a proxy's, the database's)
                raise
            # The client hung up (a pull interrupted, a download cancelled): its doing,
            # one line, no traceback. Nothing can be answered; the connection is closed.
            log.info("%s %s: the client went away (%s)", request.method, request.path, exc)
            resp = _error_response(UNKNOWN("the client went away", status=499))
            if BYTES_SENT not in request:  # the body's bytes that went out: none counted
                request[BYTES_SENT] = 0
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                # A burst of connections, each holding a pack: no traceback, the limit.
                log.error("%s %s: %s", request.method, request.path, _out_of_files(exc.errno))
                resp = _error_response(UNAVAILABLE(
                    "the registry has too many files open: retry shortly, or tell its operator",
                    status=503, headers={"Retry-After": "1"}))
            else:
                log.exception("%s %s failed", request.method, request.path)
                resp = _error_response(UNKNOWN(INTERNAL_ERROR))
        else:
            answered = True
        if not answered and request.writer.output_size > 0 and request.transport is not None:
            # The handler's response began and broke off: another answer would be read as
            # the rest of its body. Close the connection: the client sees a short body
            # and retries (aiohttp finds the connection closing and writes nothing).
            request.transport.close()
        status = resp.status
        if reg.draining and not resp.prepared:
            resp.force_close()  # shutting down: no keep-alive
        return resp
    finally:
        reg.request_finished()
        sent = request.get(BYTES_SENT)
        if sent is None and resp is not None:
            sent = resp.content_length or 0
        after_request(reg, request, resp, status, time.perf_counter() - started, sent or 0)


async def _healthz(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY]
    try:
        await reg.meta.repository_exists("")
    except Exception:
        log.exception("health check: the metadata database does not answer")
        return web.json_response(
            {"status": "unhealthy", "error": "the metadata database does not answer"},
            status=503,
        )
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    return await metrics_response(request.app[REGISTRY])


async def _expire_uploads(reg: Registry) -> None:
    """Abort upload sessions idle for longer than ``uploads_ttl`` and forget them."""
    expired = await reg.store.expire_ingests(reg.config.uploads_ttl)
    live = {i.id for i in await reg.store.list_ingests()}
    for upload_id in await reg.meta.uploads():
        if upload_id not in live:
            reg.forget_upload(upload_id)
            await reg.meta.remove_upload(upload_id)
    if expired:
        log.info("expired %d idle upload session(s)", expired)


async def _expiry_loop(reg: Registry) -> None:
    while True:
        try:
            await _expire_uploads(reg)
        except Exception:  # keep expiring on the next round
            log.exception("upload expiry failed")
        await asyncio.sleep(max(reg.config.uploads_expire_interval, 1.0))


# The longest header value a request may send (aiohttp's default is 8190 bytes). A
# zstd:chunked partial pull (containers/image) asks for up to 1,024 ranges of a layer in
# one Range header, ~25 KiB for a layer of gigabytes; CNCF Distribution takes 1 MiB of
# headers. aiohttp answered such a pull 400 (podman then asked again with its ranges
# merged into fewer, larger ones).
_MAX_HEADER_FIELD = 32 * 1024


def make_app(
    config: ServerConfig,
    *,
    store: BlobStore | None = None,
    storage: Path | None = None,
    metadata: RegistryMetadata | None = None,
    upload_locks: UploadLocks | None = None,
) -> web.Application:
    """Build the registry application.

    ``store``: an already-open store to serve (the caller closes it), else ``cas.Store`` is
    opened at ``storage`` (default: ``config.storage``, else the cas default location)
    and closed on shutdown. ``metadata``: an open metadata backend (the caller closes
    it), else :func:`~registry.server.metadata_open.open_metadata` opens the default for the
    same directory (``registry.db``) and it is closed on shutdown. ``upload_locks``: the
    session locks (default: shared through the PostgreSQL metadata database when there is
    one, :mod:`~registry.server.upload_locks_pg`; else among the processes serving the
    storage directory, :mod:`~registry.server.upload_locks_file`).
    """
    app = web.Application(
        middlewares=[_registry_middleware],
        client_max_size=1 << 30,
        # A request body may queue this much before aiohttp stops reading the socket
        # (twice it, then resumes at it). The default, 64 KiB, paused and resumed the
        # socket for every read of a pushed blob: a pair of system calls per 256 KiB.
        handler_args={"read_bufsize": UPLOAD_READ_BUFFER, "max_field_size": _MAX_HEADER_FIELD,
                      # A body is taken as sent, whatever its Content-Encoding, as
                      # Distribution takes it: the bytes on the wire are the blob (a
                      # .tar.gz layer is gzip), counted by Content-Length and digest.
                      "auto_decompress": False},
    )
    app.on_response_prepare.append(close_unless_continued)
    if config.http_headers:  # http.headers: on every response, as Distribution adds them
        extra = dict(config.http_headers)

        async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
            for name, value in extra.items():
                response.headers.setdefault(name, value)

        app.on_response_prepare.append(add_headers)
    auth: Authorizer | None = None
    basic = None
    if config.auth_htpasswd is not None:
        auth = basic = BasicAuth(Htpasswd.load(config.auth_htpasswd), config.auth_realm)
    root = storage or config.storage or default_storage_dir()
    if token_auth_configured(config):
        # Bearer tokens; the htpasswd users (if any) log in at the token endpoint.
        auth = build_token_auth(config, basic, root)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        opened: Store | None = None
        if store is None:
            # Kept SHA-256 states (cas.digest_states): a pushed blob that begins as a
            # readable base is hashed from the base's last state on (local files under
            # the root: each replica keeps its own, best effort).
            opened = await open_store(StoreConfig.at(root, database=config.database,
                                                     migrate=config.database_migrate)
                                      .with_digest_states()
                                      .with_packs_in(config.packs)
                                      .with_piece_cache(None if config.cache_pieces_bytes < 0
                                                        else config.cache_pieces_bytes,
                                                        config.cache_pieces_dir))
        serving: BlobStore = store if store is not None else opened  # type: ignore[assignment]
        meta = metadata if metadata is not None else await open_metadata(
            root, config.database, config.database_migrate)
        own_locks: PgUploadLocks | None = None
        if upload_locks is None and config.database:
            # Replicas share sessions: a request holds its session on every replica.
            own_locks = await PgUploadLocks.open(config.database,
                                                 max_size=config.uploads_max_active + 16)
        file_locks: FileUploadLocks | None = None
        if upload_locks is None and own_locks is None:
            # Other processes may serve this storage directory: its sessions are theirs too.
            with contextlib.suppress(OSError):  # a directory that takes no write takes no upload
                file_locks = FileUploadLocks.at(root)
        locks = upload_locks or own_locks or file_locks or InProcessUploadLocks()
        reg = Registry(
            config=config,
            store=serving,
            meta=meta,
            cache=ManifestCache(config.cache_manifest_bytes),
            auth=auth,
            root=root,
            upload_locks=locks,
        )
        app[REGISTRY] = reg
        # Sessions left open before a restart count against the totals (client unknown).
        open_ingests = {i.id: i.offset for i in await serving.list_ingests()}
        for upload_id in await meta.uploads():
            if upload_id in open_ingests:
                reg.upload_limits.update(upload_id, open_ingests[upload_id])
        expiry = asyncio.create_task(_expiry_loop(reg))
        try:
            yield
        finally:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
            for ingest in list(reg.ingests.values()):
                with contextlib.suppress(Exception):
                    await ingest.park()  # a no-op for the idle ones
            if own_locks is not None:
                await own_locks.close()
            if file_locks is not None:
                file_locks.close()
            if metadata is None:
                await meta.close()
            if opened is not None:
                await opened.close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(proxy_context(config))
    app.cleanup_ctx.append(health_context(config.health_file, config.health_storagedriver,
                                          lambda: app[REGISTRY].meta.repository_exists("")))
    app.cleanup_ctx.append(notifications_lifecycle)
    app.cleanup_ctx.append(retention_lifecycle)  # after: it stops before the notifier
    # 100 Continue only once a handler reads the body (expect.py).
    app.router.add_route("*", "/v2/{tail:.*}", dispatch, expect_handler=defer_continue)
    app.router.add_route("*", "/v2", dispatch, expect_handler=defer_continue)
    app.router.add_get("/healthz", _healthz)
    if config.http_debug_prometheus_on_registry_port:
        app.router.add_get("/metrics", _metrics)
    app.router.add_route("*", "/token", token_endpoint, expect_handler=defer_continue)
    return app
