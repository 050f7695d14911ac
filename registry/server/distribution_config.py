"""CNCF Distribution's ``config.yml``, read as ``pybuild serve``'s own configuration.

A config file whose top level has ``version`` (Distribution's files always start with
``version: 0.1``) is Distribution's dialect: :func:`from_distribution` turns it into
pybuild's settings, so a team moving from ``registry:2`` keeps its file. Every key
Distribution documents is either mapped, accepted as having nothing to do in pybuild (and
listed in ``docs/registry.md``), or refused with an error that names it; a key Distribution
does not know is refused too. Behaviour follows Distribution where the two differ:
deletion is off unless ``storage.delete.enabled`` is true, ``http.addr: :5000`` (or
``0.0.0.0:5000``, ``[::]:5000``) listens on every IPv4 and IPv6 address, and with
``storage.s3`` blob GETs are redirected to the bucket unless ``storage.redirect.disable``
is true (Distribution's s3 driver does so by default).
Values are read as Distribution reads them: booleans are YAML's ``true``/``false`` (a
quoted ``"true"``, which Distribution takes as off or refuses, is refused by name),
durations carry their unit (``168h``), and the deprecated top-level ``loglevel`` counts
when ``log.level`` is not given. ``REGISTRY_*`` variables are laid over the document
first (:mod:`~registry.server.distribution_env`).

The ``database:`` section takes GitLab's container registry keys (``enabled``, ``host``,
``port``, ``user``, ``password``, ``dbname``, ``sslmode``), which are pybuild's own too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from cas.s3_location import S3Location

from .proxy_config import parse_duration

__all__ = ["DistributionConfigError", "from_distribution", "is_distribution_config", "s3_location"]

# Keys accepted because pybuild has nothing to do for them (the reason is in the docs).
_IGNORED = {
    "log.fields",  # extra fields of Distribution's log lines; pybuild's lines are its own JSON
    "log.formatter",
    "log.hooks",
    "storage.cache",  # pybuild caches manifests and blob descriptors itself
    "redis",  # only ever Distribution's blob descriptor cache (storage.cache.blobdescriptor)
    "storage.tag.concurrencylimit",  # lookups in one database, nothing to spread
    "http.http2",  # pybuild speaks HTTP/1.1, which every registry client speaks too
    "compatibility.schema1.signingkeyfile",  # signs schema1 manifests, which pybuild never serves
    "storage.filesystem.maxthreads",
    "http.secret",  # upload state lives in the store's metadata, not in signed URLs
    "http.host",
    "http.relativeurls",  # every Location pybuild writes is relative (a bucket's URL aside)
}


class DistributionConfigError(ValueError):
    """A Distribution config key pybuild cannot honour (the message names it)."""


def is_distribution_config(doc: Mapping[str, Any]) -> bool:
    return "version" in doc


def _flat(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if name in _DRIVERS and (value is None or value == {}):
            out[name] = {}  # a driver named without settings is still that driver
            continue
        if value is None or (isinstance(value, Mapping) and not value and name not in _OPAQUE):
            continue  # an empty key or section says nothing (Distribution's default holds)
        if isinstance(value, Mapping) and name not in _OPAQUE:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


# Drivers: an empty one is the driver without settings, never nothing said.
_DRIVERS = {"storage.s3", "storage.gcs", "storage.azure", "storage.swift", "storage.oss",
            "storage.inmemory", "auth.htpasswd", "auth.token", "auth.silly"}
# Values taken whole (mappings whose keys are data, not settings).
_OPAQUE = {"http.headers", "log.fields", "storage.cache", "health.file", "health.storagedriver", "health.http",
           "health.tcp", "notifications.endpoints", "proxy.upstreams", "storage.s3", "log.hooks"}


def _addr(value: Any) -> str:
    """Go listens on every address of both families for any wildcard host (``:5000``,
    ``0.0.0.0:5000``, ``[::]:5000``): that is pybuild's ``:5000`` (:mod:`.listen`)."""
    text = str(value)
    host, sep, port = text.rpartition(":")
    return f":{port}" if sep and host in ("", "0.0.0.0", "[::]") else text


def _enabled(value: Any) -> bool:
    """A Distribution boolean: YAML's ``true``/``false`` only. Distribution reads a quoted
    ``"true"`` as off (``storage.delete.enabled``) or refuses it, so pybuild refuses it
    rather than guess which (the caller names the key)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"must be true or false (unquoted), got {value!r}")


def _duration(value: Any) -> float:
    """Seconds from a Go duration with its unit (``168h``, ``10m``, ``1h30m``): Distribution
    refuses a bare number here or reads it as nanoseconds, so pybuild refuses it too."""
    if value == 0 and not isinstance(value, bool):
        return 0.0  # Go's durations take a bare 0
    if not isinstance(value, str):
        raise ValueError(f"must be a duration with its unit, such as 30s, 10m or 168h; got {value!r}")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"must be a duration with its unit, such as 30s, 10m or 168h; got {value!r}") from exc


# Distribution key -> (pybuild's nested key path, conversion)
_MAPPED: dict[str, tuple[tuple[str, ...], Callable[[Any], Any]]] = {
    "log.level": (("log", "level"), str),
    "log.accesslog.disabled": (("log", "access"), lambda v: not _enabled(v)),
    "storage.filesystem.rootdirectory": (("storage",), str),
    "storage.maintenance.uploadpurging.age": (("uploads", "ttl"), lambda v: _duration(v)),
    "storage.maintenance.uploadpurging.interval": (("uploads", "expire_interval"), lambda v: _duration(v)),
    "storage.maintenance.readonly.enabled": (("read_only",), _enabled),
    "http.addr": (("addr",), _addr),
    "http.tls.certificate": (("tls", "cert"), str),
    "http.tls.key": (("tls", "key"), str),
    "http.tls.clientcas": (("tls", "clientcas"), lambda v: v),  # tls.py
    "http.tls.minimumtls": (("tls", "minimum"), str),
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
    "health.file": (("health", "file"), lambda v: v),  # health.py
    "health.storagedriver": (("health", "storagedriver"), lambda v: v),  # health.py
    "notifications.endpoints": (("notifications", "endpoints"), lambda v: v),
    "notifications.queue_size": (("notifications", "queue_size"), lambda v: v),  # pybuild's own
    # Distribution waits this long for connections to finish on SIGTERM.
    "http.draintimeout": (("shutdown_timeout",), lambda v: _duration(v)),
    **{f"proxy.{k}": (("proxy", k), lambda v: v)
       for k in ("remoteurl", "username", "password", "mixed", "upstreams")},
    "proxy.ttl": (("proxy", "ttl"), lambda v: _duration(v)),
    # the pieces' packs in S3 (storage.filesystem.rootdirectory, if given, is where the
    # store keeps its local state); the conversion is :func:`s3_location`
    "storage.s3": (("packs",), lambda v: v),
    **{f"database.{k}": (("database", k), lambda v: v)
       for k in ("enabled", "host", "port", "user", "password", "dbname", "sslmode", "url",
                 "migrate")},
}


# Sections pybuild refuses whole: (section, what it does in Distribution, what to do).
_REFUSED = (
    ("middleware", "runs Distribution's Go middleware (cloudfront, redirect, ...)",
     "remove the middleware section"),
    ("reporting", "reports errors to bugsnag or newrelic", "remove the reporting section"),
    ("validation", "checks the URLs of foreign layers in pushed manifests",
     "remove the validation section (pybuild accepts any foreign layer URL)"),
    ("compatibility.schema1.enabled", "with true accepts schema1 manifests",
     "set it to false: pybuild refuses schema1 manifests, as Distribution does by default"),
    ("compatibility", "converts or accepts schema1 manifests", "remove the compatibility section"),
    ("auth.silly", "accepts any Authorization header", "use auth.htpasswd or auth.token"),
    ("http.tls.letsencrypt", "fetches certificates from Let's Encrypt",
     "give http.tls.certificate and http.tls.key (e.g. from certbot)"),
    ("http.net", "picks a unix socket to listen on", "remove it: pybuild listens on TCP (http.addr)"),
    ("http.prefix", "serves the API under a path prefix",
     "remove it and strip the prefix in the reverse proxy in front"),
    ("http.tls.ciphersuites", "sets the TLS cipher suites",
     "remove it or terminate TLS in a reverse proxy"),
    ("health.http", "makes every request a 503 while an HTTP check fails",
     "remove it and check the upstream from the load balancer"),
    ("health.tcp", "makes every request a 503 while a TCP check fails",
     "remove it and check the upstream from the load balancer"),
    ("notifications.events.includereferences", "adds a manifest's references to events",
     "remove it or set it to false: pybuild's events carry no references"),
)


def _unsupported(key: str) -> str | None:
    """Why a known Distribution key cannot be honoured, or None if it is not one."""
    for other in ("gcs", "azure", "swift", "oss", "inmemory"):
        if key.startswith(f"storage.{other}"):
            return f"the {other} storage driver is not supported; use storage.filesystem or storage.s3"
    if key.startswith("storage.redirect"):
        return "storage.redirect only takes disable"
    for section, does, fix in _REFUSED:
        if key == section or key.startswith(section + "."):
            return f"pybuild does not support it (in Distribution, {section} {does}); {fix}"
    return None


def from_distribution(doc: Mapping[str, Any], source: str,
                      origins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """pybuild's nested settings for Distribution's config document ``doc`` (read from
    ``source``, named in errors; ``origins`` names the ``REGISTRY_*`` variable that set a
    key, :func:`~registry.server.distribution_env.apply_registry_env`)."""

    def where(key: str) -> str:
        for set_key, name in (origins or {}).items():
            if set_key == key or set_key.startswith(key + ".") or key.startswith(set_key + "."):
                return name
        return source

    version = str(doc.get("version", ""))
    if version != "0.1":
        raise DistributionConfigError(
            f"{where('version')}: version {version!r}: a Distribution config file says version: 0.1")
    out: dict[str, Any] = {"delete": {"blobs": False, "manifests": False, "tags": False}}
    # `storage: filesystem` / `auth: htpasswd` name a driver without settings, as in Distribution.
    doc = {k: {v: {}} if k in ("storage", "auth") and isinstance(v, str) else v for k, v in doc.items()}
    auth = doc.get("auth")
    if isinstance(auth, dict) and len(auth) > 1:
        raise DistributionConfigError(
            f"{where('auth')}: auth names {len(auth)} access controllers ({', '.join(map(str, auth))}): "
            "Distribution takes exactly one; keep one of them")
    flat = _flat(doc)
    # The deprecated top-level loglevel counts when log.level is not given (as in Distribution).
    if "loglevel" in flat:
        level = flat.pop("loglevel")
        flat.setdefault("log.level", level)
    purging = flat.get("storage.maintenance.uploadpurging.enabled", True)
    # A dry run only logs what it would purge: sessions stay, as with enabled: false.
    dryrun = flat.pop("storage.maintenance.uploadpurging.dryrun", False)
    try:
        purging = purging is True and not _enabled(dryrun)
    except ValueError as exc:
        key = "storage.maintenance.uploadpurging.dryrun"
        raise DistributionConfigError(f"{where(key)}: {key} {exc}") from exc
    for key, value in flat.items():
        if key == "version" or any(key == k or key.startswith(k + ".") for k in _IGNORED):
            continue
        try:
            _apply(out, key, value, where(key))
        except ValueError as exc:
            if isinstance(exc, DistributionConfigError):
                raise
            raise DistributionConfigError(f"{where(key)}: {key} {exc}") from exc
    if not purging:  # never purge: idle sessions stay for 100 years, whatever age says
        out.setdefault("uploads", {})["ttl"] = 100 * 365 * 86400
    # Distribution purges uploads idle for 168h unless told otherwise (pybuild's own: 24h).
    out.setdefault("uploads", {}).setdefault("ttl", 168 * 3600)
    if "packs" in out:
        # Distribution's s3 driver redirects blob GETs to the bucket unless told not to:
        # clients that pulled from it reach the bucket, and expect the same here.
        out.setdefault("storage_redirect", True)
    return out


_SPECIAL = ("storage.delete.enabled", "storage.redirect.disable", "compatibility.schema1.enabled",
            "storage.maintenance.uploadpurging.enabled", "notifications.events.includereferences")


def _apply(out: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set what Distribution key ``key`` says in pybuild's settings ``out``."""
    if key == "storage.delete.enabled":
        on = _enabled(value)
        out["delete"] = {"blobs": on, "manifests": on, "tags": on}
        return
    if key == "storage.redirect.disable":
        out["storage_redirect"] = not _enabled(value)
        return
    if key == "storage.maintenance.uploadpurging.enabled":
        _enabled(value)  # checked here; applied once every key is read
        return
    mapped = _MAPPED.get(key)
    if mapped is None and value == {} and key.startswith("auth.") and _unsupported(key) is None:
        raise DistributionConfigError(f"{source}: {key} is empty: give its settings or remove it")
    if mapped is None and any(k.startswith(key + ".") for k in (*_MAPPED, *_IGNORED, *_SPECIAL)):
        raise DistributionConfigError(f"{source}: {key} must be a mapping of its settings, got {value!r}")
    if key in ("notifications.events.includereferences", "compatibility.schema1.enabled") and value is False:
        return  # what pybuild does: events without references; schema1 manifests refused
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

_DISTRIBUTION_S3 = ("accesskey", "secretkey", "region", "regionendpoint", "bucket",
                    "rootdirectory", "secure", "chunksize")
# Keys of Distribution's s3 driver whose value (this one, or None: any) is what pybuild
# does anyway (SigV4, path-style requests, verified TLS, the bucket's default encryption
# and storage class; the multipartcopy* and loglevel keys tune the driver's own server-side
# copies and logs), accepted as Distribution's own sample config sets them; any other
# value is refused with the reason.
_S3_AS_PYBUILD_DOES: dict[str, tuple[object, str]] = {
    "v4auth": (True, "pybuild signs every request with AWS Signature Version 4"),
    "forcepathstyle": (True, "pybuild sends path-style requests (HOST/BUCKET/KEY)"),
    "skipverify": (False, "pybuild verifies the endpoint's TLS certificate; give it a "
                          "trusted one (or secure: false on a private network)"),
    "encrypt": (False, "pybuild does not ask for server-side encryption per object; turn on "
                       "the bucket's default encryption instead"),
    "accelerate": (False, "pybuild does not use S3 Transfer Acceleration"),
    "usedualstack": (False, "pybuild does not use dual-stack endpoints; name one in "
                            "regionendpoint"),
    "storageclass": ("STANDARD", "pybuild writes the bucket's default storage class; set "
                                 "a lifecycle rule on the bucket instead"),
    **dict.fromkeys(("multipartcopychunksize", "multipartcopymaxconcurrency",
                     "multipartcopythresholdsize", "loglevel"), (None, "")),
}


def s3_location(keys: Mapping[str, Any], source: str) -> S3Location:
    """The packs' S3 location from CNCF Distribution's ``storage.s3`` keys (``accesskey``,
    ``secretkey``, ``region``, ``regionendpoint``, ``bucket``, ``rootdirectory``,
    ``secure``, ``chunksize``). Keys not given come from ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``; a ``regionendpoint`` with a scheme decides ``secure``."""
    if not isinstance(keys, Mapping):
        raise DistributionConfigError(f"{source}: storage.s3 must be a mapping of its settings, got {keys!r}")
    unknown = sorted(set(keys) - set(_DISTRIBUTION_S3) - set(_S3_AS_PYBUILD_DOES))
    if unknown:
        raise DistributionConfigError(f"{source}: storage.s3: unsupported key(s) {', '.join(unknown)}; "
                          f"supported: {', '.join(_DISTRIBUTION_S3)}")
    for key, (value, why) in _S3_AS_PYBUILD_DOES.items():
        if key in keys and value is not None and keys[key] != value:
            raise DistributionConfigError(
                f"{source}: storage.s3.{key}: {keys[key]!r} is not supported: {why}; remove the "
                f"key or set it to {str(value).lower() if isinstance(value, bool) else value}")
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
