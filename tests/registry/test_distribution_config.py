"""A CNCF Distribution ``config.yml`` read as ``pybuild serve``'s config
(registry/server/distribution_config.py): every documented key mapped, accepted or
refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.server.config import ConfigError, ServerConfig, load_config

TESTFILES = Path(__file__).parent / "testfiles" / "config"


def _load(tmp_path: Path, text: str) -> ServerConfig:
    path = tmp_path / "config.yml"
    path.write_text(text)
    return load_config(path, environ={})


def test_debians_shipped_config_is_read_as_distribution_reads_it() -> None:
    config = load_config(TESTFILES / "distribution-debian.yml", environ={})
    assert config.addr == ":5000"  # listens on every interface, IPv4 and IPv6
    assert config.storage == Path("/var/lib/docker-registry")
    assert (config.delete_blobs, config.delete_manifests, config.delete_tags) == (True,) * 3
    assert config.auth_htpasswd == Path("/etc/docker/registry")
    assert config.auth_realm == "basic-realm"
    assert config.http_headers == (("X-Content-Type-Options", "nosniff"),)


def test_every_mapped_key(tmp_path: Path) -> None:
    config = _load(tmp_path, """
version: 0.1
log: {level: debug, accesslog: {disabled: true}, formatter: json, fields: {service: registry}}
storage:
  filesystem: {rootdirectory: /srv/registry}
  maintenance:
    uploadpurging: {enabled: true, age: 168h, interval: 24h, dryrun: false}
    readonly: {enabled: true}
  redirect: {disable: true}
  cache: {blobdescriptor: inmemory}
http:
  addr: 127.0.0.1:5001
  secret: not-needed
  tls: {certificate: /etc/ssl/reg.pem, key: /etc/ssl/reg.key}
  headers: {X-Content-Type-Options: [nosniff], X-Frame-Options: [DENY]}
  debug: {addr: ':5002', prometheus: {enabled: true, path: /m}}
auth:
  token: {realm: 'https://auth.example/token', service: reg, issuer: auth, jwks: /etc/jwks.json}
proxy: {remoteurl: 'https://upstream.example', ttl: 1h}
database: {enabled: true, host: db.internal, port: 5433, user: reg, password: "p'w", dbname: registry, sslmode: require}
health: {storagedriver: {enabled: true, interval: 10s, threshold: 3}}
""")
    assert config.log_level == "debug" and config.log_access is False
    assert config.storage == Path("/srv/registry")
    assert config.uploads_ttl == 168 * 3600 and config.uploads_expire_interval == 24 * 3600
    assert config.read_only is True
    assert config.storage_redirect is False
    assert (config.delete_blobs, config.delete_manifests, config.delete_tags) == (False,) * 3
    assert config.addr == "127.0.0.1:5001"
    assert (config.tls_cert, config.tls_key) == (Path("/etc/ssl/reg.pem"), Path("/etc/ssl/reg.key"))
    assert dict(config.http_headers) == {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
    assert config.http_debug_addr == ":5002" and config.http_debug_prometheus_path == "/m"
    assert config.auth_token_realm == "https://auth.example/token"
    assert config.auth_token_service == "reg" and config.auth_token_jwks == Path("/etc/jwks.json")
    assert config.proxy_remoteurl == "https://upstream.example" and config.proxy_ttl == 3600
    assert config.database == ("host='db.internal' port='5433' user='reg' password='p\\'w' "
                               "dbname='registry' sslmode='require'")


def test_deletion_is_off_unless_enabled_as_in_distribution(tmp_path: Path) -> None:
    config = _load(tmp_path, "version: 0.1\nstorage: {filesystem: {rootdirectory: /srv}}\n")
    assert (config.delete_blobs, config.delete_manifests, config.delete_tags) == (False,) * 3


def test_relative_urls_are_what_pybuild_writes_anyway(tmp_path: Path) -> None:
    for value in ("true", "false"):
        config = _load(tmp_path, f"version: 0.1\nhttp: {{addr: 127.0.0.1:5999, relativeurls: {value}}}\n")
        assert config.addr == "127.0.0.1:5999"


def test_the_s3_keys_of_distributions_sample_config_that_change_nothing_are_accepted() -> None:
    # storage.s3 as Distribution's configuration reference shows it, with the values that
    # are what pybuild does anyway (SigV4, path style, no per-object encryption, ...)
    config = load_config(TESTFILES / "distribution-s3-sample.yml", environ={})
    assert config.packs is not None
    assert (config.packs.endpoint, config.packs.bucket, config.packs.prefix) == (
        "myobjects.local", "bucketname", "s3/object/name/prefix/")
    assert (config.packs.secure, config.packs.region, config.packs.part_size) == (False, "us-west-1", 5 << 20)


def test_upload_purging_disabled_keeps_sessions(tmp_path: Path) -> None:
    config = _load(tmp_path, "version: 0.1\nstorage:\n  maintenance:\n    uploadpurging: {enabled: false}\n")
    assert config.uploads_ttl >= 50 * 365 * 86400


@pytest.mark.parametrize(("text", "message"), [
    ("version: 0.1\nstorage: {s3: {bucket: b, region: us-east-1, v4auth: false}}\n",
     r"storage\.s3\.v4auth: False is not supported: pybuild signs every request with AWS "
     r"Signature Version 4; remove the key or set it to true"),
    ("version: 0.1\nstorage: {s3: {bucket: b, encrypt: true}}\n",
     r"storage\.s3\.encrypt: True is not supported: .*turn on the bucket's default encryption"),
    ("version: 0.1\nstorage: {s3: {bucket: b, storageclass: REDUCED_REDUNDANCY}}\n",
     r"storage\.s3\.storageclass: 'REDUCED_REDUNDANCY' is not supported: .*set it to STANDARD"),
    ("version: 0.1\nstorage: {s3: {bucket: b, sessiontoken: x}}\n",
     r"storage\.s3: unsupported key\(s\) sessiontoken"),
    ("version: 0.1\nstorage: {gcs: {bucket: b}}\n", r"storage\.gcs\.bucket: the gcs storage driver is not supported"),
    ("version: 0.1\nmiddleware: {registry: [{name: cloudfront}]}\n", r"middleware.*: pybuild does not support it"),
    ("version: 0.1\nhttp: {prefix: /registry/}\n", r"http\.prefix: pybuild does not support it"),
    ("version: 0.1\nstorage: {filesystem: {rootdir: /srv}}\n",
     r"storage\.filesystem\.rootdir: Distribution has no such setting"),
    ("version: 0.2\n", r"version '0\.2': a Distribution config file says version: 0\.1"),
    ('version: 0.1\nhttp: {headers: {"X-Bad": "a\\r\\nInjected: 1"}}\n',
     r"http_headers: header 'X-Bad': names and values are one line"),
    ("version: 0.1\nlog: {level: loud}\n", r"log\.level must be debug, info, warning or error"),
])
def test_what_pybuild_cannot_honour_is_an_error_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, text)


def test_pybuilds_own_files_are_unchanged(tmp_path: Path) -> None:
    config = _load(tmp_path, "addr: 127.0.0.1:6000\nuploads: {ttl: 2h}\nhttp: {headers: {X-A: b}}\n")
    assert config.addr == "127.0.0.1:6000" and config.uploads_ttl == 7200
    assert config.http_headers == (("X-A", "b"),)
    assert (config.delete_blobs, config.delete_manifests) == (True, True)  # pybuild's default


def test_storage_redirect_follows_distribution(tmp_path: Path) -> None:
    s3 = "version: 0.1\nstorage:\n  s3: {bucket: images, regionendpoint: 'http://127.0.0.1:7480'}\n"
    # Distribution's s3 driver redirects blob GETs unless storage.redirect.disable is true.
    assert _load(tmp_path, s3).storage_redirect is True
    assert _load(tmp_path, s3 + "  redirect: {disable: true}\n").storage_redirect is False
    assert _load(tmp_path, s3 + "  redirect: {disable: false}\n").storage_redirect is True
    # The filesystem driver never redirects; an explicit disable: false is kept all the same.
    assert _load(tmp_path, "version: 0.1\nlog: {level: info}\n").storage_redirect is False
    on = _load(tmp_path, "version: 0.1\nstorage:\n  redirect: {disable: false}\n")
    assert on.storage_redirect is True
