"""A Distribution ``config.yml`` read as Distribution reads it: ``REGISTRY_*`` variables over
the file (registry/server/distribution_env.py), booleans as YAML booleans, the deprecated
top-level ``loglevel``, and ``uploadpurging.enabled: false`` whatever ``age`` says."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.server.config import ConfigError, ServerConfig, load_config
from registry.server.distribution_env import apply_registry_env

TESTFILES = Path(__file__).parent / "testfiles" / "config"


def _load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ServerConfig:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def test_registry_variables_override_the_file(tmp_path: Path) -> None:
    config = load_config(TESTFILES / "distribution-debian.yml", environ={
        "REGISTRY_HTTP_ADDR": "127.0.0.1:5123",
        "REGISTRY_STORAGE_DELETE_ENABLED": "false",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/srv/images",
        "REGISTRY_AUTH_HTPASSWD_PATH": "/etc/registry/htpasswd",
        "REGISTRY_LOG_LEVEL": "warn",
        "REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": "true",
        "REGISTRY_PROXY_REMOTEURL": "https://upstream.example",
        "REGISTRY_PROXY_TTL": "168h",
    })
    assert config.addr == "127.0.0.1:5123"
    assert (config.delete_blobs, config.delete_manifests, config.delete_tags) == (False,) * 3
    assert config.storage == Path("/srv/images")
    assert config.auth_htpasswd == Path("/etc/registry/htpasswd")
    assert config.auth_realm == "basic-realm"  # the file's, left as it was
    assert config.log_level == "warn"
    assert config.read_only is True
    assert config.proxy_remoteurl == "https://upstream.example" and config.proxy_ttl == 168 * 3600


def test_registry_variables_without_the_key_in_the_file(tmp_path: Path) -> None:
    text = "version: 0.1\nstorage: {filesystem: {rootdirectory: /srv}}\n"
    assert _load(tmp_path, text).delete_blobs is False
    config = _load(tmp_path, text, {"REGISTRY_STORAGE_DELETE_ENABLED": "true",
                                    "REGISTRY_HTTP_ADDR": ":5000",
                                    "REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE": "2h"})
    assert (config.delete_blobs, config.delete_manifests, config.delete_tags) == (True,) * 3
    assert config.addr == ":5000" and config.uploads_ttl == 7200


def test_registry_auth_names_the_driver_then_its_keys(tmp_path: Path) -> None:
    # docker's documented `-e REGISTRY_AUTH=htpasswd -e REGISTRY_AUTH_HTPASSWD_PATH=...`
    config = _load(tmp_path, "version: 0.1\nauth: {token: {realm: 'https://a/token', service: s, issuer: i}}\n",
                   {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "Registry Realm",
                    "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd"})
    assert config.auth_htpasswd == Path("/auth/htpasswd") and config.auth_realm == "Registry Realm"
    assert config.auth_token_realm is None  # REGISTRY_AUTH replaced the file's auth section


def test_other_variables_are_left_alone(tmp_path: Path) -> None:
    config = _load(tmp_path, "version: 0.1\n", {"REGISTRY_HOST": "x", "REGISTRY_PORT_5000_TCP": "tcp://y",
                                                "PYBUILD_ADDR": "127.0.0.1:5077"})
    assert config.addr == "127.0.0.1:5077"
    # an empty value changes nothing; a text YAML 1.1 would read as base 60 stays text
    config = _load(tmp_path, "version: 0.1\nhttp: {tls: {certificate: /c.pem, key: /k.pem}}\n",
                   {"REGISTRY_HTTP_TLS_CERTIFICATE": ""})
    assert config.tls_cert == Path("/c.pem")
    doc, origins = apply_registry_env({"version": 0.1}, {"REGISTRY_HTTP_HOST": "5:00", "REGISTRY_LOG_LEVEL": "3"})
    assert doc["http"]["host"] == "5:00" and doc["log"]["level"] == 3
    assert origins == {"http.host": "REGISTRY_HTTP_HOST", "log.level": "REGISTRY_LOG_LEVEL"}


def test_a_refused_key_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError,
                       match=r"REGISTRY_HTTP_PREFIX: http\.prefix: pybuild does not support it .*reverse proxy"):
        _load(tmp_path, "version: 0.1\n", {"REGISTRY_HTTP_PREFIX": "/registry/"})
    with pytest.raises(ConfigError, match=r"REGISTRY_STORAGE_DELETE_ENABLED: storage\.delete\.enabled must be "
                                          r"true or false"):
        _load(tmp_path, "version: 0.1\n", {"REGISTRY_STORAGE_DELETE_ENABLED": "sure"})


@pytest.mark.parametrize("key", [
    "storage: {delete: {enabled: 'true'}}",  # Distribution reads a quoted "true" as off
    "storage: {maintenance: {readonly: {enabled: 'yes'}}}",
    "storage: {maintenance: {uploadpurging: {enabled: 'false'}}}",
    "storage: {redirect: {disable: 'true'}}",
    "log: {accesslog: {disabled: 'true'}}",
])
def test_a_quoted_boolean_is_refused_by_name(tmp_path: Path, key: str) -> None:
    name = key.replace("{", "").replace("}", "").split(":")[:-1]
    dotted = ".".join(part.strip() for part in name)
    with pytest.raises(ConfigError, match=rf"config\.yml: {dotted} must be true or false \(unquoted\)"):
        _load(tmp_path, f"version: 0.1\n{key}\n")


def test_purging_disabled_wins_over_its_age(tmp_path: Path) -> None:
    # Distribution's own docs list enabled before age and interval.
    config = _load(tmp_path, "version: 0.1\nstorage:\n  maintenance:\n    uploadpurging:\n"
                             "      enabled: false\n      age: 168h\n      interval: 24h\n      dryrun: false\n")
    assert config.uploads_ttl >= 50 * 365 * 86400
    assert config.uploads_expire_interval == 24 * 3600


@pytest.mark.parametrize(("text", "level"), [
    ("version: 0.1\nloglevel: debug\n", "debug"),
    ("version: 0.1\nloglevel: debug\nlog: {level: error}\n", "error"),  # log.level wins
])
def test_the_deprecated_top_level_loglevel(tmp_path: Path, text: str, level: str) -> None:
    assert _load(tmp_path, text).log_level == level


def test_letsencrypt_is_refused_as_unsupported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"http\.tls\.letsencrypt\.cachefile: pybuild does not support it "
                                          r".*http\.tls\.certificate"):
        _load(tmp_path, "version: 0.1\nhttp: {tls: {letsencrypt: {cachefile: /c, email: a@b}}}\n")


def test_a_dry_run_purges_nothing(tmp_path: Path) -> None:
    # Distribution's dry run only logs what it would purge.
    config = _load(tmp_path, "version: 0.1\nstorage:\n  maintenance:\n    uploadpurging:\n"
                             "      {enabled: true, age: 1h, interval: 1m, dryrun: true}\n")
    assert config.uploads_ttl >= 50 * 365 * 86400 and config.uploads_expire_interval == 60
    config = _load(tmp_path, "version: 0.1\nstorage:\n  maintenance:\n    uploadpurging:\n"
                             "      {enabled: true, age: 1h, interval: 1m, dryrun: false}\n")
    assert config.uploads_ttl == 3600


def test_draintimeout_is_the_grace_for_requests_in_flight(tmp_path: Path) -> None:
    assert _load(tmp_path, "version: 0.1\nhttp: {draintimeout: 5s}\n").shutdown_timeout == 5
    with pytest.raises(ConfigError, match=r"http\.draintimeout must be a duration with its unit"):
        _load(tmp_path, "version: 0.1\nhttp: {draintimeout: soon}\n")


def test_keys_that_change_nothing_clients_see_are_accepted(tmp_path: Path) -> None:
    config = _load(tmp_path, """
version: 0.1
storage:
  cache: {blobdescriptor: redis}
  tag: {concurrencylimit: 8}
redis: {addr: localhost:6379, password: s, db: 0, dialtimeout: 10ms, pool: {maxidle: 16}}
http: {addr: 127.0.0.1:5010, http2: {disabled: false}, tls: {certificate: /c.pem, key: /k.pem, minimumtls: tls1.2}}
compatibility: {schema1: {enabled: false, signingkeyfile: /etc/registry/key.json}}
notifications:
  events: {includereferences: false}
  endpoints: [{name: ci, url: 'http://127.0.0.1:9/e', timeout: 1s, threshold: 3, backoff: 1s}]
""")
    assert config.addr == "127.0.0.1:5010" and config.tls_cert == Path("/c.pem")
    assert [e.name for e in config.notifications_endpoints] == ["ci"]


@pytest.mark.parametrize(("text", "message"), [
    ("notifications: {events: {includereferences: true}}",
     r"notifications\.events\.includereferences: pybuild does not support it .*set it to false"),
    ("http: {tls: {certificate: /c, key: /k, minimumtls: tls1.1}}",
     r"tls_minimum: pybuild accepts tls1\.2 or tls1\.3 \(TLS 1\.0 and 1\.1 are broken\), got 'tls1\.1'"),
    ("redis: {addr: 'r:6379'}\nvalidation: {manifests: {urls: {allow: ['^https://']}}}",
     r"validation\.manifests\.urls\.allow: pybuild does not support it \(in Distribution, validation "
     r".*remove the validation section"),
    ("health: {http: [{uri: 'http://x/', statuscode: 200}]}",
     r"health\.http: pybuild does not support it \(in Distribution, health\.http makes every request a 503"),
    ("middleware: {registry: [{name: redirect}]}", r"middleware\.registry: .*remove the middleware section"),
    ("compatibility: {schema1: {enabled: true}}", r"compatibility\.schema1\.enabled: .*set it to false"),
])
def test_refused_keys_say_what_to_do(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, f"version: 0.1\n{text}\n")


@pytest.mark.parametrize(("text", "message"), [
    # Distribution refuses a bare number here (or reads it as nanoseconds): not seconds
    ("storage: {maintenance: {uploadpurging: {enabled: true, age: 168, interval: 24h}}}",
     r"storage\.maintenance\.uploadpurging\.age must be a duration with its unit, such as 30s, 10m or 168h; got 168"),
    ("storage: {maintenance: {uploadpurging: {age: 7d}}}",
     r"storage\.maintenance\.uploadpurging\.age must be a duration with its unit"),
    ("proxy: {remoteurl: 'https://upstream.example', ttl: forever}", r"proxy\.ttl must be a duration"),
    ("proxy: {remoteurl: 'https://upstream.example', cachesize: 3}", r"proxy\.cachesize: Distribution has no such"),
    ("proxy: 'https://upstream.example'", r"config\.yml: proxy must be a mapping of its settings"),
    ("log: debug", r"config\.yml: log must be a mapping of its settings, got 'debug'"),
    ("storage: {delete: true}", r"storage\.delete must be a mapping of its settings, got True"),
    ("storage: {s3: images}", r"storage\.s3 must be a mapping of its settings"),
    ("http: {tls: {certificate: /c.pem}}", r"http\.tls\.certificate and http\.tls\.key"),
    ("storage:\n  s3:", r"storage\.s3\.bucket is required"),  # was a TypeError
    ("storage: {gcs: {}}", r"storage\.gcs: the gcs storage driver is not supported"),
    ("auth: {htpasswd: }", r"auth\.htpasswd is empty: give its settings or remove it"),
    ("auth: {silly: }", r"auth\.silly: pybuild does not support it"),
    ("auth: {htpasswd: {realm: r, path: /h}, token: {realm: 'https://t/', service: s, issuer: i}}",
     r"auth names 2 access controllers \(htpasswd, token\): Distribution takes exactly one"),
])
def test_values_of_the_wrong_shape_name_the_distribution_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, f"version: 0.1\n{text}\n")


def test_empty_sections_and_driver_names_say_what_distribution_reads(tmp_path: Path) -> None:
    config = _load(tmp_path, "version: 0.1\nauth:\nstorage: filesystem\nhttp: {addr: 127.0.0.1:5011, tls: {}}\n"
                             "proxy: {remoteurl: 'https://upstream.example', ttl: 0}\n")
    assert config.auth_htpasswd is None and config.addr == "127.0.0.1:5011" and config.proxy_ttl == 0


def test_uploads_live_as_long_as_distribution_keeps_them_by_default(tmp_path: Path) -> None:
    # Distribution's default purging: enabled, age 168h (pybuild's own format: 24h).
    assert _load(tmp_path, "version: 0.1\nhttp: {addr: 127.0.0.1:5012}\n").uploads_ttl == 168 * 3600
    assert _load(tmp_path, "version: 0.1\nstorage: {maintenance: {uploadpurging: {interval: 1h}}}\n"
                 ).uploads_ttl == 168 * 3600
    assert load_config(None, environ={}).uploads_ttl == 86400
