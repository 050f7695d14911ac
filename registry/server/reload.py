"""Reloading a running registry's configuration (``pybuild serve`` on SIGHUP).

The new configuration is read and checked completely (config file, environment, flags,
the htpasswd file it names) before anything changes; if any of it is unusable the error is
logged and the running configuration stays, whole. Settings bound at start-up
(:data:`RESTART_ONLY`: listen address, storage, packs, database, TLS, event loop, logging,
connection and upload limits, shutdown timeout, the pull-through cache's ``proxy``
settings...) keep their running value and a warning says that they need a restart.
Reloading never stops the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from .auth import BasicAuth, Htpasswd, read_htpasswd
from .config import ConfigError, ServerConfig
from .state import Registry
from .token_server import build_token_auth
from .tokens import token_auth_configured

__all__ = ["RESTART_ONLY", "reload_config"]

log = logging.getLogger("pybuild.registry")

RESTART_ONLY = (
    "addr", "storage", "tls_cert", "tls_key", "event_loop", "log_access", "shutdown_timeout",
    "tls_clientcas", "tls_minimum",
    "proxy_remoteurl", "proxy_username", "proxy_password", "proxy_ttl", "proxy_mixed",
    "proxy_upstreams",
    "http_debug_addr", "http_debug_prometheus_enabled", "http_debug_prometheus_path",
    "http_debug_prometheus_on_registry_port", "notifications_endpoints", "notifications_queue_size",
    "health_file", "health_storagedriver",  # watched from the start (health.py)
    "retention_interval",  # the policies, delay and grace are read again at every run
    "cache_pieces_bytes", "cache_pieces_dir",  # the store's piece cache is made at start
    # The store and the metadata are opened at start.
    "packs", "database_url", "database_enabled", "database_host", "database_port",
    "database_user", "database_password", "database_dbname", "database_sslmode",
    "database_migrate",
    # Upload limits and slots (limits.py) are made with the Registry.
    "uploads_max_sessions", "uploads_max_sessions_per_client", "uploads_max_bytes",
    "uploads_max_bytes_per_client", "uploads_max_active", "uploads_max_active_per_client",
    # Bound into the HTTP server, the response hook and the logging set up at start.
    "http_header_timeout", "http_idle_timeout", "http_max_connections",
    "http_max_connections_per_client", "http_headers", "log_level", "log_audit",
)


async def reload_config(reg: Registry, load: Callable[[], ServerConfig]) -> bool:
    """Apply the configuration ``load()`` returns to ``reg``; True if it was applied."""
    try:
        new = await asyncio.to_thread(load)
        table: Htpasswd | None = None
        if new.auth_htpasswd is not None:
            table = await read_htpasswd(new.auth_htpasswd)
    except (ConfigError, OSError, ValueError) as exc:
        log.error("configuration not reloaded, the running one stays: %s", exc)
        return False
    old = reg.config
    fixed = [k for k in RESTART_ONLY if getattr(new, k) != getattr(old, k)]
    if fixed:
        log.warning("reload: %s changed; restart the server to apply it", ", ".join(fixed))
        new = dataclasses.replace(new, **{k: getattr(old, k) for k in fixed})
    if token_auth_configured(new):
        # Keys, policy and issuer are re-read whole; the htpasswd users log in at /token.
        basic = BasicAuth(table, new.auth_realm) if table is not None else None
        storage = reg.root or old.storage or _storage()
        try:
            token_auth = await asyncio.to_thread(build_token_auth, new, basic, storage)
        except (ConfigError, OSError, ValueError) as exc:
            log.error("configuration not reloaded, the running one stays: %s", exc)
            return False
        reg.auth = token_auth
    elif table is None:
        if reg.auth is not None:
            log.warning("reload: authentication is now off (no htpasswd configured)")
        reg.auth = None
    elif isinstance(reg.auth, BasicAuth) and reg.auth.source == table.path:
        reg.auth.realm = new.auth_realm
        reg.auth.use(table)
    else:
        reg.auth = BasicAuth(table, new.auth_realm)
    reg.cache.max_bytes = new.cache_manifest_bytes
    reg.config = new
    log.info(
        "configuration reloaded%s", f" ({len(table.users)} htpasswd user(s))" if table else ""
    )
    return True


def _storage() -> Path:
    from cas.location import default_storage_dir

    return default_storage_dir()
