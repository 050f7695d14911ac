"""``pybuild serve`` configuration: defaults < config file < ``PYBUILD_*`` env < flags.

The config file is YAML (``.yaml``/``.yml``) or TOML (``.toml``)::

    addr: 127.0.0.1:5000          # PYBUILD_ADDR
    # A CNCF Distribution config.yml (it starts with `version: 0.1`) is read too:
    # distribution_config.py maps its keys, docs/registry.md lists them.
    storage: /var/lib/pybuild     # PYBUILD_STORAGE
    packs: s3://KEY:SECRET@s3.example:443/bucket/prefix   # PYBUILD_PACKS: packs in S3
                                  # (default: on disk in the storage directory; see
                                  # docs/storage.md; keys may come from AWS_ACCESS_KEY_ID/...)
                                  # (Distribution's storage.s3 keys: distribution_s3())
    read_only: false              # PYBUILD_READ_ONLY
    storage_redirect: false       # PYBUILD_STORAGE_REDIRECT: (packs in S3) answer a blob GET with
                                  # a 307 to a presigned URL when the blob is one whole object
                                  # (a Distribution config.yml with storage.s3: on by default)
    database:                     # metadata on PostgreSQL, shared by replicas (docs/storage.md)
      url: postgresql://registry@db.internal/registry   # PYBUILD_DATABASE_URL (libpq URI), or:
      enabled: false                    # GitLab registry's keys: PYBUILD_DATABASE_ENABLED ...
      host: db.internal
      port: 5432
      user: registry
      password: secret
      dbname: registry
      sslmode: prefer
      migrate: false                    # PYBUILD_DATABASE_MIGRATE: apply schema migrations at start
    auth:
      htpasswd: /etc/pybuild/htpasswd   # PYBUILD_AUTH_HTPASSWD (bcrypt entries)
      realm: pybuild-registry           # PYBUILD_AUTH_REALM
      token:                            # bearer tokens (Distribution's auth.token keys)
        realm: https://auth.example/token   # PYBUILD_AUTH_TOKEN_REALM: the token server
        service: registry.example           # PYBUILD_AUTH_TOKEN_SERVICE: expected aud
        issuer: auth.example                # PYBUILD_AUTH_TOKEN_ISSUER: expected iss
        rootcertbundle: /etc/pybuild/token-ca.pem   # PYBUILD_AUTH_TOKEN_ROOTCERTBUNDLE
        jwks: /etc/pybuild/jwks.json                # PYBUILD_AUTH_TOKEN_JWKS
        issue:                          # the built-in token server (docs/registry.md)
          key: /etc/pybuild/token-key.pem   # PYBUILD_AUTH_TOKEN_ISSUE_KEY (made if missing)
          policy: /etc/pybuild/access.yaml  # PYBUILD_AUTH_TOKEN_ISSUE_POLICY
          ttl: 300                          # PYBUILD_AUTH_TOKEN_ISSUE_TTL: token seconds
    tls:
      cert: /etc/pybuild/cert.pem       # PYBUILD_TLS_CERT
      key: /etc/pybuild/key.pem         # PYBUILD_TLS_KEY; also clientcas: [CA files], minimum: tls1.3 (tls.py)
    delete:
      blobs: true                       # PYBUILD_DELETE_BLOBS
      manifests: true                   # PYBUILD_DELETE_MANIFESTS
      tags: true                        # PYBUILD_DELETE_TAGS
    uploads:
      ttl: 86400                        # PYBUILD_UPLOADS_TTL: idle seconds before expiry
      expire_interval: 600              # PYBUILD_UPLOADS_EXPIRE_INTERVAL
      max_sessions: 10000               # open sessions in all (0: no limit); past it 429
      max_sessions_per_client: 1000     # ... per client (remote address)
      max_bytes: 274877906944           # bytes open sessions hold, in all (256 GiB)
      max_bytes_per_client: 68719476736 # ... per client (64 GiB)
      max_active: 16                    # bodies streamed into ingests at once; more wait
      max_active_per_client: 8          # ... per client
    http:
      header_timeout: 20                # seconds a new connection has to send its headers
      idle_timeout: 120                 # seconds a keep-alive connection may stay idle
                                        # (and has to send the next request's headers)
      body_timeout: 60                  # seconds an upload body may go without 64 KiB
      max_connections: 4096             # open connections in all (0: no limit)
      max_connections_per_client: 256   # ... per client (remote address)
      headers: {X-Content-Type-Options: nosniff}  # added to every response
      debug:
        addr: 127.0.0.1:5001            # PYBUILD_HTTP_DEBUG_ADDR: the debug server (metrics); off when empty
        prometheus:
          enabled: true                 # serve the metrics on the debug server
          path: /metrics
          on_registry_port: false       # also GET /metrics on the registry's port (as before)
    notifications:                      # webhooks in CNCF Distribution's format (notifications.py)
      endpoints:
        - name: ci
          url: http://127.0.0.1:8080/events
          headers: {Authorization: [Bearer token]}
          timeout: 1s
          threshold: 5
          backoff: 1s
          ignoredmediatypes: [application/octet-stream]
          ignore: {mediatypes: [], actions: [pull]}
          disabled: false
      queue_size: 10000                 # undelivered events kept per endpoint; more are dropped
    cache:
      manifest_bytes: 67108864          # PYBUILD_CACHE_MANIFEST_BYTES
      pieces_bytes: 10737418240         # PYBUILD_CACHE_PIECES_BYTES: (packs in S3) the bound of
                                        # this replica's local cache of pieces served (default:
                                        # 10 GiB or half the free space; 0: no cache)
      pieces_dir: /var/cache/pybuild    # default: <storage>/cache/pieces
    log:
      level: info                       # PYBUILD_LOG_LEVEL: debug, info, warning, error
      access: true                      # PYBUILD_LOG_ACCESS: one JSON line per request
      audit: true                       # PYBUILD_LOG_AUDIT: one JSON line per write (audit.py)
    shutdown_timeout: 60                # PYBUILD_SHUTDOWN_TIMEOUT: grace for in-flight requests
    event_loop: auto                    # PYBUILD_EVENT_LOOP: auto (uvloop if installed),
                                        # uvloop or asyncio
    retention:                          # online retention (retention.py, retention_policy.py)
      interval: 0                       # PYBUILD_RETENTION_INTERVAL: run every (0: never)
      untagged_delay: 24h               # untagged manifests older than this go
      upload_grace: 1h                  # blob links younger than this stay
      policies: []                      # per repository pattern: which tags to keep
    proxy:                              # a pull-through cache (see proxy_config.py)
      remoteurl: https://registry-1.docker.io  # PYBUILD_PROXY_REMOTEURL
      username: alice                   # PYBUILD_PROXY_USERNAME
      password: secret                  # PYBUILD_PROXY_PASSWORD
      ttl: 0                            # PYBUILD_PROXY_TTL: seconds or 30s/5m/168h
      mixed: false                      # PYBUILD_PROXY_MIXED: accept pushes too
      upstreams: []                     # PYBUILD_PROXY_UPSTREAMS: [{host, remoteurl, ...}]

Env var names are the key path joined by ``_``, upper-cased, prefixed ``PYBUILD_``.
Booleans accept true/false/1/0/yes/no/on/off. An unknown key is an error that names it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from cas.s3_location import S3Location

from .distribution_config import (
    DistributionConfigError,
    from_distribution,
    is_distribution_config,
    s3_location,
)
from .distribution_env import apply_registry_env
from .health import FileCheck, StorageCheck, parse_file_checks, parse_storage_check
from .notifications import Endpoint, parse_endpoints
from .proxy_config import Upstream, parse_duration, parse_upstreams, upstream_from_remoteurl
from .retention_policy import Policy, parse_policies, parse_retention_duration
from .tls import parse_client_cas, parse_minimum_tls

__all__ = ["ConfigError", "ServerConfig", "load_config", "parse_addr"]


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``pybuild serve`` needs; attribute names are the flat key paths."""

    addr: str = "127.0.0.1:5000"
    storage: Path | None = None  # None: cas.location.default_storage_dir()
    packs: S3Location | None = None  # None: as the storage directory records (default: on disk)
    read_only: bool = False
    storage_redirect: bool = False  # 307 to a presigned S3 URL for blobs that are one object
    database_url: str | None = field(default=None, repr=False)
    database_enabled: bool = False
    database_host: str | None = None
    database_port: int = 5432
    database_user: str | None = None
    database_password: str | None = field(default=None, repr=False)
    database_dbname: str | None = None
    database_sslmode: str | None = None
    database_migrate: bool = False
    auth_htpasswd: Path | None = None
    auth_realm: str = "pybuild-registry"
    auth_token_realm: str | None = None
    auth_token_service: str | None = None
    auth_token_issuer: str | None = None
    auth_token_rootcertbundle: Path | None = None
    auth_token_jwks: Path | None = None
    auth_token_issue_key: Path | None = None
    auth_token_issue_policy: Path | None = None
    auth_token_issue_ttl: float = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_clientcas: tuple[Path, ...] = ()
    tls_minimum: str = "tls1.2"
    delete_blobs: bool = True
    delete_manifests: bool = True
    delete_tags: bool = True
    uploads_ttl: float = 86400.0
    uploads_expire_interval: float = 600.0
    uploads_max_sessions: int = 10_000
    uploads_max_sessions_per_client: int = 1_000
    uploads_max_bytes: int = 256 << 30
    uploads_max_bytes_per_client: int = 64 << 30
    uploads_max_active: int = 16
    uploads_max_active_per_client: int = 8
    http_header_timeout: float = 20.0
    http_idle_timeout: float = 120.0
    http_body_timeout: float = 60.0
    http_max_connections: int = 4096
    http_max_connections_per_client: int = 256
    http_headers: tuple[tuple[str, str], ...] = ()
    http_debug_addr: str = ""  # "": no debug server
    http_debug_prometheus_enabled: bool = True
    http_debug_prometheus_path: str = "/metrics"
    http_debug_prometheus_on_registry_port: bool = False
    notifications_endpoints: tuple[Endpoint, ...] = ()
    notifications_queue_size: int = 10_000
    cache_manifest_bytes: int = 64 * 1024 * 1024
    cache_pieces_bytes: int = -1  # -1: 10 GiB or half the free space; 0: no piece cache
    cache_pieces_dir: Path | None = None  # None: <storage>/cache/pieces
    log_level: str = "info"
    log_access: bool = True
    log_audit: bool = True
    shutdown_timeout: float = 60.0
    event_loop: str = "auto"
    proxy_remoteurl: str | None = None
    proxy_username: str | None = None
    proxy_password: str | None = field(default=None, repr=False)
    proxy_ttl: float = 0.0
    proxy_mixed: bool = False
    proxy_upstreams: tuple[Upstream, ...] = ()
    retention_interval: float = 0.0  # 0: no scheduled run
    retention_untagged_delay: float = 86400.0
    retention_upload_grace: float = 3600.0
    retention_policies: tuple[Policy, ...] = ()
    health_file: tuple[FileCheck, ...] = ()  # while one of these files exists: 503 (health.py)
    health_storagedriver: StorageCheck | None = None  # while the storage does not answer: 503

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_addr(self.addr)

    @property
    def database(self) -> str | None:
        """The PostgreSQL connection string of the metadata, or None (SQLite files in the
        storage directory): ``database.url``, else one made of GitLab's keys when
        ``database.enabled``."""
        if self.database_url:
            return self.database_url
        if not self.database_enabled:
            return None
        parts = {"host": self.database_host, "port": str(self.database_port),
                 "user": self.database_user, "password": self.database_password,
                 "dbname": self.database_dbname, "sslmode": self.database_sslmode}
        return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items() if v)


_TYPES: dict[str, type] = {
    "addr": str,
    "storage": Path,
    "packs": S3Location,
    "read_only": bool,
    "storage_redirect": bool,
    "database_url": str,
    "database_enabled": bool,
    "database_host": str,
    "database_port": int,
    "database_user": str,
    "database_password": str,
    "database_dbname": str,
    "database_sslmode": str,
    "database_migrate": bool,
    "auth_htpasswd": Path,
    "auth_realm": str,
    "auth_token_realm": str,
    "auth_token_service": str,
    "auth_token_issuer": str,
    "auth_token_rootcertbundle": Path,
    "auth_token_jwks": Path,
    "auth_token_issue_key": Path,
    "auth_token_issue_policy": Path,
    "auth_token_issue_ttl": float,
    "tls_cert": Path,
    "tls_key": Path,
    "tls_clientcas": tuple, "tls_minimum": str,
    "delete_blobs": bool,
    "delete_manifests": bool,
    "delete_tags": bool,
    "uploads_ttl": float,
    "uploads_expire_interval": float,
    "uploads_max_sessions": int,
    "uploads_max_sessions_per_client": int,
    "uploads_max_bytes": int,
    "uploads_max_bytes_per_client": int,
    "uploads_max_active": int,
    "uploads_max_active_per_client": int,
    "http_header_timeout": float,
    "http_idle_timeout": float,
    "http_body_timeout": float,
    "http_max_connections": int,
    "http_max_connections_per_client": int,
    "http_headers": tuple,
    "http_debug_addr": str,
    "http_debug_prometheus_enabled": bool,
    "http_debug_prometheus_path": str,
    "http_debug_prometheus_on_registry_port": bool,
    "notifications_endpoints": tuple,
    "notifications_queue_size": int,
    "cache_manifest_bytes": int,
    "cache_pieces_bytes": int,
    "cache_pieces_dir": Path,
    "log_level": str,
    "log_access": bool,
    "log_audit": bool,
    "shutdown_timeout": float,
    "event_loop": str,
    "proxy_remoteurl": str,
    "proxy_username": str,
    "proxy_password": str,
    "proxy_ttl": float,
    "proxy_mixed": bool,
    "proxy_upstreams": tuple,
    "retention_interval": float,
    "retention_untagged_delay": float,
    "retention_upload_grace": float,
    "retention_policies": tuple,
    "health_file": tuple, "health_storagedriver": object,
}
def _packs_setting(value: Any) -> S3Location:
    """The ``packs`` setting: an ``s3://`` URL, or a location already made (from
    Distribution's ``storage.s3`` keys, :func:`distribution_s3`)."""
    return value if isinstance(value, S3Location) else S3Location.parse(str(value))


# Settings with their own parser (ValueError when the value does not parse).
def _parse_headers(value: Any) -> tuple[tuple[str, str], ...]:
    """``{Name: value or [values]}`` (a mapping, or its YAML/JSON text in the env)."""
    if isinstance(value, str):
        value = yaml.safe_load(value)
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of header name to value, e.g. {X-Frame-Options: DENY}")
    out = []
    for name, values in value.items():
        text = ", ".join(map(str, values)) if isinstance(values, list | tuple) else str(values)
        if not str(name) or any(c in str(name) + text for c in "\r\n"):
            raise ValueError(f"header {name!r}: names and values are one line each")
        out.append((str(name), text))
    return tuple(out)


_PARSERS = {
    "proxy_ttl": parse_duration,
    "proxy_upstreams": parse_upstreams,
    "uploads_ttl": parse_duration,
    "uploads_expire_interval": parse_duration,
    "http_headers": _parse_headers,
    "retention_interval": parse_retention_duration,
    "retention_untagged_delay": parse_retention_duration,
    "retention_upload_grace": parse_retention_duration,
    "retention_policies": parse_policies,
    "health_file": parse_file_checks, "health_storagedriver": parse_storage_check,
    "tls_clientcas": parse_client_cas, "tls_minimum": parse_minimum_tls,
}
_PARSERS["packs"] = _packs_setting
assert set(_TYPES) == {f.name for f in fields(ServerConfig)}


def _conninfo_value(value: str) -> str:
    """A libpq ``key=value`` value, quoted (single quotes, backslash escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; ``:PORT``: host ``""``, every address) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]"), int(port)


def _convert(key: str, value: Any, source: str) -> Any:
    kind = _TYPES[key]
    parse = _PARSERS.get(key)
    if parse is not None:
        try:
            return parse(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from exc
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if kind in (int, float):
        try:
            number = kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}") from exc
        if number < 0:
            raise ConfigError(f"{source}: {key} must not be negative, got {value!r}")
        return number
    if kind is tuple:  # notifications.endpoints: a list of mappings (YAML/JSON in the env)
        try:
            return parse_endpoints(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
    if kind is Path:
        return Path(str(value)).expanduser()
    return str(value)


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{str(key).replace('-', '_')}"
        if isinstance(value, Mapping) and not name.startswith(("proxy_upstreams", "http_headers", "health_")):
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def _read_file(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            doc: Any = tomllib.loads(text)
        else:
            doc = yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:] or 'YAML'}: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top")
    if is_distribution_config(doc):
        try:  # Distribution's REGISTRY_* variables apply over its file, as Distribution does
            doc, origins = apply_registry_env(doc, env)
            doc = from_distribution(doc, str(path), origins)
        except DistributionConfigError as exc:
            raise ConfigError(str(exc)) from exc
    flat = _flatten(doc)
    unknown = sorted(set(flat) - set(_TYPES))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_TYPES))} (nested keys join with '_')"
        )
    return {k: _convert(k, v, str(path)) for k, v in flat.items()}


# CNCF Distribution's storage.s3 keys that name the bucket (the rest are refused).

def distribution_s3(keys: Mapping[str, Any], source: str) -> S3Location:
    """The packs' S3 location from CNCF Distribution's ``storage.s3`` keys
    (:func:`~registry.server.distribution_config.s3_location`); ConfigError if unusable."""
    try:
        return s3_location(keys, source)
    except DistributionConfigError as exc:
        raise ConfigError(str(exc)) from exc


def load_config(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Build the effective config: defaults < file < ``PYBUILD_*`` env < ``overrides``.

    ``config_file`` defaults to ``$PYBUILD_CONFIG`` when set. ``overrides`` are the command
    line flags (None values are ignored, so unset flags do not mask the env or file).
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    file = config_file or (Path(env["PYBUILD_CONFIG"]) if env.get("PYBUILD_CONFIG") else None)
    if file is not None:
        values.update(_read_file(file, env))
    for key in _TYPES:
        text = env.get(f"PYBUILD_{key.upper()}")
        if text:
            values[key] = _convert(key, text, f"PYBUILD_{key.upper()}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _convert(key, value, f"--{key.replace('_', '-')}")
    config = replace(ServerConfig(), **values)
    parse_addr(config.addr)  # validate now, not at bind time
    if config.log_level.lower() not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"log.level must be debug, info, warning or error, got {config.log_level!r}")
    if config.event_loop not in ("auto", "asyncio", "uvloop"):
        raise ConfigError(f"event_loop must be auto, asyncio or uvloop, got {config.event_loop!r}")
    if config.proxy_remoteurl is not None:
        try:
            upstream_from_remoteurl(config.proxy_remoteurl, None, None, 0)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if config.http_debug_addr:
        parse_addr(config.http_debug_addr)
    if not config.http_debug_prometheus_path.startswith("/"):
        raise ConfigError(
            f"http.debug.prometheus.path must start with '/', got {config.http_debug_prometheus_path!r}"
        )
    if config.database_enabled and not config.database_url and not (
            config.database_host and config.database_dbname):
        raise ConfigError("database.enabled needs database.host and database.dbname "
                          "(or give database.url, a postgresql:// URI)")
    _SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
    if config.database_sslmode is not None and config.database_sslmode not in _SSLMODES:
        raise ConfigError(f"database.sslmode must be one of {', '.join(_SSLMODES)}, "
                          f"got {config.database_sslmode!r}")
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS needs both a certificate and a key (tls.cert and tls.key; in a Distribution "
                          "config.yml http.tls.certificate and http.tls.key; --tls-cert and --tls-key)")
    return config
