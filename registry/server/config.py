"""``pybuild serve`` configuration: defaults < config file < ``PYBUILD_*`` env < flags.

The config file is YAML (``.yaml``/``.yml``) or TOML (``.toml``)::

    addr: 127.0.0.1:5000          # PYBUILD_ADDR
    storage: /var/lib/pybuild     # PYBUILD_STORAGE
    packs: s3://KEY:SECRET@s3.example:443/bucket/prefix   # PYBUILD_PACKS: packs in S3
                                  # (default: on disk in the storage directory; see
                                  # docs/storage.md; keys may come from AWS_ACCESS_KEY_ID/...)
                                  # (Distribution's storage.s3 keys: distribution_s3())
    read_only: false              # PYBUILD_READ_ONLY
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
      key: /etc/pybuild/key.pem         # PYBUILD_TLS_KEY
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
    log:
      access: true                      # PYBUILD_LOG_ACCESS: one JSON line per request
      audit: true                       # PYBUILD_LOG_AUDIT: one JSON line per write (audit.py)
    shutdown_timeout: 60                # PYBUILD_SHUTDOWN_TIMEOUT: grace for in-flight requests
    event_loop: auto                    # PYBUILD_EVENT_LOOP: auto (uvloop if installed),
                                        # uvloop or asyncio
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

from .notifications import Endpoint, parse_endpoints
from .proxy_config import Upstream, parse_duration, parse_upstreams, upstream_from_remoteurl

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
    http_debug_addr: str = ""  # "": no debug server
    http_debug_prometheus_enabled: bool = True
    http_debug_prometheus_path: str = "/metrics"
    http_debug_prometheus_on_registry_port: bool = False
    notifications_endpoints: tuple[Endpoint, ...] = ()
    notifications_queue_size: int = 10_000
    cache_manifest_bytes: int = 64 * 1024 * 1024
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

    @property
    def host_port(self) -> tuple[str, int]:
        return parse_addr(self.addr)


_TYPES: dict[str, type] = {
    "addr": str,
    "storage": Path,
    "packs": S3Location,
    "read_only": bool,
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
    "http_debug_addr": str,
    "http_debug_prometheus_enabled": bool,
    "http_debug_prometheus_path": str,
    "http_debug_prometheus_on_registry_port": bool,
    "notifications_endpoints": tuple,
    "notifications_queue_size": int,
    "cache_manifest_bytes": int,
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
}
def _packs_setting(value: Any) -> S3Location:
    """The ``packs`` setting: an ``s3://`` URL, or a location already made (from
    Distribution's ``storage.s3`` keys, :func:`distribution_s3`)."""
    return value if isinstance(value, S3Location) else S3Location.parse(str(value))


# Settings with their own parser (ValueError when the value does not parse).
_PARSERS = {"proxy_ttl": parse_duration, "proxy_upstreams": parse_upstreams}
_PARSERS["packs"] = _packs_setting
assert set(_TYPES) == {f.name for f in fields(ServerConfig)}


def parse_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ConfigError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"invalid address {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]") or "0.0.0.0", int(port)


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
        if isinstance(value, Mapping) and name != "proxy_upstreams":
            out.update(_flatten(value, name + "_"))
        else:
            out[name] = value
    return out


def _read_file(path: Path) -> dict[str, Any]:
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
    flat = _flatten(doc)
    unknown = sorted(set(flat) - set(_TYPES))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_TYPES))} (nested keys join with '_')"
        )
    return {k: _convert(k, v, str(path)) for k, v in flat.items()}


# CNCF Distribution's storage.s3 keys that name the bucket (the rest are refused).
_DISTRIBUTION_S3 = ("accesskey", "secretkey", "region", "regionendpoint", "bucket",
                    "rootdirectory", "secure", "chunksize")


def distribution_s3(keys: Mapping[str, Any], source: str) -> S3Location:
    """The packs' S3 location from CNCF Distribution's ``storage.s3`` keys (``accesskey``,
    ``secretkey``, ``region``, ``regionendpoint``, ``bucket``, ``rootdirectory``,
    ``secure``, ``chunksize``). Keys not given come from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``; a ``regionendpoint`` with a scheme decides ``secure``."""
    unknown = sorted(set(keys) - set(_DISTRIBUTION_S3))
    if unknown:
        raise ConfigError(f"{source}: storage.s3: unsupported key(s) {', '.join(unknown)}; "
                          f"supported: {', '.join(_DISTRIBUTION_S3)}")
    if not keys.get("bucket"):
        raise ConfigError(f"{source}: storage.s3.bucket is required")
    region = str(keys.get("region") or "us-east-1")
    endpoint = str(keys.get("regionendpoint") or f"s3.{region}.amazonaws.com")
    raw = keys.get("secure", True)
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    secure = raw if isinstance(raw, bool) else words.get(str(raw).strip().lower())
    if secure is None:
        raise ConfigError(f"{source}: storage.s3.secure must be true or false, got {raw!r}")
    if "://" in endpoint:
        scheme, _, endpoint = endpoint.partition("://")
        secure = scheme == "https"
    try:
        return S3Location(
            endpoint.rstrip("/"), str(keys["bucket"]), str(keys.get("rootdirectory") or "").strip("/"),
            str(keys.get("accesskey") or os.environ.get("AWS_ACCESS_KEY_ID", "")),
            str(keys.get("secretkey") or os.environ.get("AWS_SECRET_ACCESS_KEY", "")),
            region, secure, int(keys.get("chunksize") or 8 << 20))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: storage.s3: {exc}") from exc


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
        values.update(_read_file(file))
    for key in _TYPES:
        text = env.get(f"PYBUILD_{key.upper()}")
        if text:
            values[key] = _convert(key, text, f"PYBUILD_{key.upper()}")
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _convert(key, value, f"--{key.replace('_', '-')}")
    config = replace(ServerConfig(), **values)
    parse_addr(config.addr)  # validate now, not at bind time
    if config.event_loop not in ("auto", "asyncio", "uvloop"):
        raise ConfigError(
            f"event_loop must be auto, asyncio or uvloop, got {config.event_loop!r}"
        )
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
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("TLS needs both a certificate and a key (--tls-cert and --tls-key)")
    return config
