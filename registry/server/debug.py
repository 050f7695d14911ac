"""The debug server: operations endpoints on their own address (``http.debug.addr``).

As in CNCF Distribution, metrics are not served on the registry's port, where every
client can reach them, but on a second listener meant for the operators' network::

    GET  <http.debug.prometheus.path>   Prometheus metrics (default /metrics)
    GET  /healthz                       the registry's health check
    GET  /debug/health                  Distribution's: ``{}`` (200), or each failing check
                                        and why (503): ``health.file``'s, the metadata's,
                                        ``health.storagedriver``'s

``http.debug.prometheus.on_registry_port`` also serves the metrics at ``GET /metrics`` on
the registry's port, as pybuild did before the debug server existed.

Its connections are bounded as the registry port's (:class:`.limits.ConnectionGuard`: the
same per-client and total counts, ``http.header_timeout``, ``http.idle_timeout``): the two
listeners share the process's descriptors, so connections held open on this port (aiohttp
keeps a silent one for an hour) would leave the registry none.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .config import ServerConfig, parse_addr
from .health import HEALTH
from .limits import ConnectionGuard
from .listen import listen_site, listen_url
from .metrics import CONTENT_TYPE
from .state import REGISTRY, Registry

__all__ = ["make_debug_app", "metrics_response", "start_debug_server"]

log = logging.getLogger("pybuild.registry")

REGISTRY_APP = web.AppKey("registry_app", web.Application)


async def metrics_response(reg: Registry) -> web.Response:
    """The metrics in Prometheus' text format (the store's figures when it answers)."""
    try:
        stats = await reg.store.stats()
    except Exception:  # metrics render even when the store cannot answer
        log.warning("metrics: store statistics unavailable", exc_info=True)
        stats = None
    body = reg.metrics.render(len(reg.ingests), stats)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _metrics(request: web.Request) -> web.Response:
    return await metrics_response(request.app[REGISTRY_APP][REGISTRY])


async def _healthz(request: web.Request) -> web.StreamResponse:
    reg = request.app[REGISTRY_APP][REGISTRY]
    try:
        await reg.meta.repository_exists("")
    except Exception:  # health checks report, never raise
        return web.json_response({"status": "unhealthy"}, status=503)
    return web.json_response({"status": "ok"})


async def _debug_health(request: web.Request) -> web.StreamResponse:
    registry_app = request.app[REGISTRY_APP]
    health = registry_app.get(HEALTH)
    failing = {str(path): "file exists" for path in sorted(health.failing)} if health else {}
    if health is not None and health.storage is not None:  # health.storagedriver's verdict
        failing["storagedriver"] = health.storage
    try:
        await registry_app[REGISTRY].meta.repository_exists("")
    except Exception as exc:  # health checks report, never raise
        failing["metadata"] = f"the metadata database does not answer: {exc}"
    return web.json_response(failing, status=503 if failing else 200)


def make_debug_app(registry_app: web.Application, config: ServerConfig) -> web.Application:
    """The debug application for the running ``registry_app`` (which owns the state)."""
    app = web.Application()
    app[REGISTRY_APP] = registry_app
    if config.http_debug_prometheus_enabled:
        app.router.add_get(config.http_debug_prometheus_path, _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/debug/health", _debug_health)
    return app


async def start_debug_server(registry_app: web.Application, config: ServerConfig,
                             guard: ConnectionGuard | None = None) -> web.AppRunner | None:
    """Listen on ``http.debug.addr`` (None when it is not set), its connections counted and
    timed by ``guard`` (the registry port's); the caller cleans up the returned runner."""
    if not config.http_debug_addr:
        return None
    host, port = parse_addr(config.http_debug_addr)
    runner = web.AppRunner(make_debug_app(registry_app, config), handle_signals=False, access_log=None,
                           keepalive_timeout=config.http_idle_timeout or float(1 << 31))  # 0: none
    await runner.setup()
    if guard is not None and runner.server is not None:
        guard.install(runner.server)
    try:
        await listen_site(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("debug server (metrics) listening on %s", listen_url("http", host, runner))
    return runner
