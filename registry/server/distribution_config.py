"""CNCF Distribution's ``config.yml``, read as ``pybuild serve``'s own configuration.

A config file whose top level has ``version`` (Distribution's files always start with
``version: 0.1``) is Distribution's dialect: :func:`from_distribution` turns it into
pybuild's settings, so a team moving from ``registry:2`` keeps its file. Every key
Distribution documents is either mapped, accepted as having nothing to do in pybuild (and
listed in ``docs/registry.md``), or refused with an error that names it; a key Distribution
does not know is refused too. Behaviour follows Distribution where the two differ:
deletion is off unless ``storage.delete.enabled`` is true, ``http.addr: :5000`` listens on
every interface, and with ``storage.s3`` blob GETs are redirected to the bucket unless
``storage.redirect.disable`` is true (Distribution's s3 driver does so by default).

The ``database:`` section takes GitLab's container registry keys (``enabled``, ``host``,
``port``, ``user``, ``password``, ``dbname``, ``sslmode``), which are pybuild's own too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from cas.s3_location import S3Location

__all__ = ["DistributionConfigError", "from_distribution", "is_distribution_config", "s3_location"]

# Keys accepted because pybuild has nothing to do for them (the reason is in the docs).
_IGNORED = {
    "log.fields",  # extra fields of Distribution's log lines; pybuild's lines are its own JSON
    "log.formatter",
    "log.hooks",
    "storage.cache",  # pybuild caches manifests and blob descriptors itself
    "storage.filesystem.maxthreads",
    "http.secret",  # upload state lives in the store's metadata, not in signed URLs
    "http.host",
    "http.draintimeout",
    "http.relativeurls",  # every Location pybuild writes is relative (a bucket's URL aside)
    "health",  # pybuild's health is GET /v2/ and the debug server's metrics
    "storage.maintenance.uploadpurging.dryrun",
}


class DistributionConfigError(ValueError):
    """A Distribution config key pybuild cannot honour (the message names it)."""


def is_distribution_config(doc: Mapping[str, Any]) -> bool:
    return "version" in doc


def _flat(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and name not in _OPAQUE:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


# Values taken whole (mappings whose keys are data, not settings).
_OPAQUE = {"http.headers", "log.fields", "storage.cache", "health", "notifications", "proxy",
           "storage.s3", "log.hooks"}


def _addr(value: Any) -> str:
    text = str(value)
    return f"0.0.0.0{text}" if text.startswith(":") else text


def _enabled(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


# Distribution key -> (pybuild's nested key path, conversion)
_MAPPED: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "log.level": (("log", "level"), str),
    "log.accesslog.disabled": (("log", "access"), lambda v: not _enabled(v)),
    "storage.filesystem.rootdirectory": (("storage",), str),
    "storage.maintenance.uploadpurging.age": (("uploads", "ttl"), str),
    "storage.maintenance.uploadpurging.interval": (("uploads", "expire_interval"), str),
    "storage.maintenance.readonly.enabled": (("read_only",), _enabled),
    "http.addr": (("addr",), _addr),
    "http.tls.certificate": (("tls", "cert"), str),
    "http.tls.key": (("tls", "key"), str),
    "http.headers": (("http", "headers"), lambda v: v),
    "http.debug.addr": (("http", "debug", "addr"), _addr),
    "http.debug.prometheus.enabled": (("http", "debug", "prometheus", "enabled"), _enabled),
    "http.debug.prometheus.path": (("http", "debug", "prometheus", "path"), str),
    "auth.htpasswd.path": (("auth", "htpasswd"), str),
    "auth.htpasswd.realm": (("auth", "realm"), str),
    "auth.token.realm": (("auth", "token", "realm"), str),
    "auth.token.service": (("auth", "token", "service"), str),
    "auth.token.issuer": (("auth", "token", "issuer"), str),
    "auth.token.rootcertbundle": (("auth", "token", "rootcertbundle"), str),
    "auth.token.jwks": (("auth", "token", "jwks"), str),
    "notifications": (("notifications",), lambda v: v),
    "proxy": (("proxy",), lambda v: v),
    # the pieces' packs in S3 (storage.filesystem.rootdirectory, if given, is where the
    # store keeps its local state); the conversion is :func:`s3_location`
    "storage.s3": (("packs",), lambda v: v),
    **{f"database.{k}": (("database", k), lambda v: v)
       for k in ("enabled", "host", "port", "user", "password", "dbname", "sslmode", "url",
                 "migrate")},
}


def _unsupported(key: str) -> str | None:
    """Why a known Distribution key cannot be honoured, or None if it is not one."""
    for other in ("gcs", "azure", "swift", "oss", "inmemory"):
        if key.startswith(f"storage.{other}"):
            return f"the {other} storage driver is not supported; use storage.filesystem"
    if key.startswith("storage.redirect"):
        return "storage.redirect only takes disable"
    if key.startswith(("middleware", "redis", "reporting", "validation", "compatibility",
                       "loglevel", "auth.silly", "http.letsencrypt", "http.net",
                       "http.prefix", "http.http2", "http.tls.clientcas",
                       "http.tls.minimumtls", "http.tls.ciphersuites")):
        return "pybuild does not support it"
    return None


def from_distribution(doc: Mapping[str, Any], source: str) -> dict[str, Any]:
    """pybuild's nested settings for Distribution's config document ``doc`` (read from
    ``source``, named in errors)."""
    version = str(doc.get("version", ""))
    if version != "0.1":
        raise DistributionConfigError(
            f"{source}: version {version!r}: a Distribution config file says version: 0.1")
    out: dict[str, Any] = {"delete": {"blobs": False, "manifests": False, "tags": False}}
    for key, value in _flat(doc).items():
        if key == "version" or any(key == k or key.startswith(k + ".") for k in _IGNORED):
            continue
        if key == "storage.delete.enabled":
            on = _enabled(value)
            out["delete"] = {"blobs": on, "manifests": on, "tags": on}
            continue
        if key == "storage.redirect.disable":
            out["storage_redirect"] = not _enabled(value)
            continue
        if key == "storage.maintenance.uploadpurging.enabled":
            if not _enabled(value):  # never purge: idle sessions stay for 100 years
                out.setdefault("uploads", {})["ttl"] = 100 * 365 * 86400
            continue
        mapped = _MAPPED.get(key)
        if mapped is None:
            why = _unsupported(key) or "Distribution has no such setting"
            raise DistributionConfigError(f"{source}: {key}: {why}")
        path, convert = mapped
        if key == "storage.s3":
            value = s3_location(value, source)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = convert(value)
    if "packs" in out:
        # Distribution's s3 driver redirects blob GETs to the bucket unless told not to:
        # clients that pulled from it reach the bucket, and expect the same here.
        out.setdefault("storage_redirect", True)
    return out

_DISTRIBUTION_S3 = ("accesskey", "secretkey", "region", "regionendpoint", "bucket",
                    "rootdirectory", "secure", "chunksize")


def s3_location(keys: Mapping[str, Any], source: str) -> S3Location:
    """The packs' S3 location from CNCF Distribution's ``storage.s3`` keys (``accesskey``,
    ``secretkey``, ``region``, ``regionendpoint``, ``bucket``, ``rootdirectory``,
    ``secure``, ``chunksize``). Keys not given come from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``; a ``regionendpoint`` with a scheme decides ``secure``."""
    unknown = sorted(set(keys) - set(_DISTRIBUTION_S3))
    if unknown:
        raise DistributionConfigError(f"{source}: storage.s3: unsupported key(s) {', '.join(unknown)}; "
                          f"supported: {', '.join(_DISTRIBUTION_S3)}")
    if not keys.get("bucket"):
        raise DistributionConfigError(f"{source}: storage.s3.bucket is required")
    region = str(keys.get("region") or "us-east-1")
    endpoint = str(keys.get("regionendpoint") or f"s3.{region}.amazonaws.com")
    raw = keys.get("secure", True)
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    secure = raw if isinstance(raw, bool) else words.get(str(raw).strip().lower())
    if secure is None:
        raise DistributionConfigError(f"{source}: storage.s3.secure must be true or false, got {raw!r}")
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
        raise DistributionConfigError(f"{source}: storage.s3: {exc}") from exc
