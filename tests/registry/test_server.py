"""Server-wide behaviour: auth, read-only mode, metrics, health, extensions, path tricks,
configuration precedence."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import bcrypt
import pytest

from cas import Digest
from registry.server import ConfigError, ServerConfig, load_config

from .helpers import error_codes, push_blob, push_image

TESTFILES = Path(__file__).parent / "testfiles"


async def test_base_endpoint_and_api_version_header(client):
    for path in ("/v2/", "/v2"):
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    # Apache's htpasswd -B writes $2y$; accept it as well.
    path = tmp_path / "htpasswd"
    path.write_text(f"# users\nalice:{hashed.replace('$2b$', '$2y$', 1)}\n")
    return path


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth(make_client, htpasswd):
    client = await make_client(
        auth_htpasswd=htpasswd, auth_realm="test-realm", http_debug_prometheus_on_registry_port=True
    )
    resp = await client.get("/v2/")
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Basic realm="test-realm"'
    assert await error_codes(resp) == ["UNAUTHORIZED"]
    bad = await client.get("/v2/", headers=_basic("alice", "wrong"))
    assert bad.status == 401
    nobody = await client.get("/v2/", headers=_basic("mallory", "s3cret"))
    assert nobody.status == 401
    ok = await client.get("/v2/", headers=_basic("alice", "s3cret"))
    assert ok.status == 200
    resp = await client.post(
        f"/v2/a/blobs/uploads/?digest={Digest.of(b'x')}", data=b"x", headers=_basic("alice", "s3cret")
    )
    assert resp.status == 201
    assert (await client.get(f"/v2/a/blobs/{Digest.of(b'x')}")).status == 401
    # Health and (with the compatibility switch) metrics stay open for probes and scrapers.
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/metrics")).status == 200


def test_htpasswd_without_bcrypt_is_refused(tmp_path):
    from registry.server.auth import load_htpasswd

    path = tmp_path / "htpasswd"
    path.write_text("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    with pytest.raises(ValueError, match="bcrypt"):
        load_htpasswd(path)


def test_an_htpasswd_path_that_is_no_file_is_refused_naming_the_fix(tmp_path):
    from registry.server.auth import Htpasswd, read_htpasswd

    missing = tmp_path / "nowhere" / "htpasswd"
    for load in (Htpasswd.load, lambda p: asyncio.run(read_htpasswd(p))):
        with pytest.raises(ValueError, match="does not exist: create it with 'htpasswd -Bc .*htpasswd USER'"):
            load(missing)
        with pytest.raises(ValueError, match=f"htpasswd path {tmp_path} is a directory.*name the file itself"):
            load(tmp_path)


def test_serve_with_debians_default_registry_config_names_the_htpasswd_problem(tmp_path):
    """Debian's docker-registry package ships a config.yml whose auth.htpasswd.path is the
    directory /etc/docker/registry; an operator pointing pybuild at it is told what to fix
    (Distribution starts, then answers every login with 400)."""
    import subprocess
    import sys

    conf_dir = tmp_path / "etc-docker-registry"
    conf_dir.mkdir()
    config = conf_dir / "config.yml"
    config.write_text(f"""version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {tmp_path / "storage"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:0
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: basic-realm
    path: {conf_dir}
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
""")
    proc = subprocess.run([sys.executable, "-m", "builder", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert f"htpasswd path {conf_dir} is a directory" in proc.stderr, proc.stderr
    assert "auth.htpasswd.path" in proc.stderr and "Errno" not in proc.stderr


async def test_read_only_mode(make_client, tmp_path):
    storage = tmp_path / "ro"
    writable = await make_client(storage=storage)
    digest, body = await push_image(writable, "ro/app", "v1", [b"layer"])
    await writable.close()
    client = await make_client(storage=storage, read_only=True)
    assert (await client.get("/v2/ro/app/manifests/v1")).status == 200
    for method, path in (
        ("POST", "/v2/ro/app/blobs/uploads/"),
        ("PUT", "/v2/ro/app/manifests/v2"),
        ("DELETE", f"/v2/ro/app/manifests/{digest}"),
        ("DELETE", f"/v2/ro/app/blobs/{digest}"),
    ):
        resp = await client.request(method, path, data=body)
        assert resp.status == 405, (method, path)
        assert await error_codes(resp) == ["UNSUPPORTED"]
    assert (await client.get("/v2/ro/app/manifests/v1")).status == 200


async def test_metrics_count_requests_bytes_and_dedup(make_client):
    # The registry port's /metrics, kept behind http.debug.prometheus.on_registry_port
    # (the debug server's are in test_operations_metrics.py).
    client = await make_client(http_debug_prometheus_on_registry_port=True)
    layer = b"same layer in two repositories" * 1000
    await push_image(client, "m/one", "t", [layer])
    await push_image(client, "m/two", "t", [layer])
    # Read the body: the server counts the request once it has sent all of it.
    assert await (await client.get(f"/v2/m/one/blobs/{Digest.of(layer)}")).read() == layer
    text = await (await client.get("/metrics")).text()
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert metrics['pybuild_registry_requests_total{method="GET",status="200"}'] >= 1
    assert metrics['pybuild_registry_requests_total{method="PUT",status="201"}'] == 2
    assert metrics["pybuild_registry_bytes_received_total"] >= 2 * len(layer)
    assert metrics["pybuild_registry_bytes_sent_total"] >= len(layer)
    assert metrics["pybuild_store_logical_bytes"] >= 2 * len(layer) or metrics["pybuild_store_dedup_ratio"] >= 1
    assert metrics["pybuild_store_dedup_ratio"] > 1.0


async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_extension_discovery_and_recipe(client):
    doc = await (await client.get("/v2/_oci/ext/discover")).json()
    assert [e["name"] for e in doc["extensions"]] == ["_oci"]
    doc = await (await client.get("/v2/some/repo/_oci/ext/discover")).json()
    names = {e["name"]: e for e in doc["extensions"]}
    assert names["_pybuild"]["endpoints"] == ["_pybuild/blob/recipe", "_pybuild/blob/uploads"]
    data = bytes(range(256)) * 4000
    digest = await push_blob(client, "some/repo", data)
    resp = await client.get(f"/v2/some/repo/_pybuild/blob/recipe?digest={digest}")
    assert resp.status == 200
    recipe = await resp.json(content_type=None)
    assert recipe["digest"] == str(digest)
    assert recipe["size"] == len(data)
    offset = 0
    for piece in recipe["pieces"]:
        assert piece["offset"] == offset
        chunk = data[offset : offset + piece["length"]]
        assert Digest.of(chunk, "blake3").encoded == piece["key"]
        # The pieces can be fetched with ordinary Range requests.
        ranged = await client.get(
            f"/v2/some/repo/blobs/{digest}",
            headers={"Range": f"bytes={offset}-{offset + piece['length'] - 1}"},
        )
        assert await ranged.read() == chunk
        offset += piece["length"]
    assert offset == len(data)
    # Not readable in another repository, so no recipe there either.
    other = await client.get(f"/v2/other/_pybuild/blob/recipe?digest={digest}")
    assert other.status == 404
    assert await error_codes(other) == ["BLOB_UNKNOWN"]
    assert (await client.get("/v2/some/repo/_pybuild/blob/recipe")).status == 400


@pytest.mark.parametrize(
    "path",
    [
        "/v2/a/../b/blobs/sha256:" + "0" * 64,
        "/v2/a/%2e%2e/b/manifests/latest",
        "/v2/a%2Fb/manifests/latest",
        "/v2/a//b/manifests/latest",
        "/v2/./a/tags/list",
        "/v2/a\\b/tags/list",
        "/v2/UPPER/tags/list",
        "/v2/-lead/tags/list",
        "/v2/" + "a" * 256 + "/tags/list",
    ],
)
async def test_path_tricks_are_name_invalid(client, path):
    host, port = client.server.host, client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400", raw[:300]
    assert json.loads(body)["errors"][0]["code"] == "NAME_INVALID"


async def test_unknown_endpoint_and_method(client):
    resp = await client.get("/v2/a/nonsense")
    assert resp.status == 404
    resp = await client.post("/v2/a/tags/list")
    assert resp.status == 405
    assert "GET" in resp.headers["Allow"]


async def test_options_is_a_cors_preflight_answer(make_client, htpasswd, tmp_path):
    # A registry UI in a browser asks OPTIONS before a DELETE (or a GET with Authorization
    # or a long Accept) to another origin; Distribution answers 200 with Allow, and the
    # CORS headers of http.headers. A 405 made the browser refuse the request.
    cors = (("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "GET, DELETE"))
    client = await make_client(http_headers=cors)
    digest, _ = await push_image(client, "ui/app", "v1", [b"x"])
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "DELETE"}
    for path, allowed in (("/v2/", "GET, HEAD"), ("/v2/_catalog", "GET"),
                          ("/v2/ui/app/tags/list", "GET"),
                          (f"/v2/ui/app/manifests/{digest}", "GET, HEAD, PUT, DELETE"),
                          (f"/v2/ui/app/blobs/{digest}", "GET, HEAD, DELETE")):
        resp = await client.options(path, headers=preflight)
        assert resp.status == 200, (path, await resp.text())
        assert resp.headers["Allow"] == allowed
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert await resp.read() == b""
    assert (await client.options("/v2/ui/app/nonsense")).status == 404
    assert (await client.delete(f"/v2/ui/app/manifests/{digest}")).status == 202
    # With auth, as in Distribution, every request needs it: OPTIONS too.
    guarded = await make_client(storage=tmp_path / "guarded", auth_htpasswd=htpasswd, http_headers=cors)
    resp = await guarded.options("/v2/_catalog", headers=preflight)
    assert resp.status == 401


def test_config_precedence(tmp_path):
    yaml_file = TESTFILES / "config" / "registry.yaml"
    config = load_config(yaml_file, environ={})
    assert config.addr == "127.0.0.1:6000"
    assert config.read_only is True
    assert config.auth_realm == "from-yaml"
    assert config.delete_blobs is False
    assert config.uploads_ttl == 120.0
    env = {"PYBUILD_ADDR": "127.0.0.1:6001", "PYBUILD_READ_ONLY": "no"}
    config = load_config(yaml_file, environ=env)
    assert config.addr == "127.0.0.1:6001"
    assert config.read_only is False
    config = load_config(yaml_file, {"addr": "127.0.0.1:6002", "read_only": None}, environ=env)
    assert config.addr == "127.0.0.1:6002"
    assert config.read_only is False
    toml = load_config(None, environ={"PYBUILD_CONFIG": str(TESTFILES / "config" / "registry.toml")})
    assert toml.addr == "0.0.0.0:7000"
    assert toml.delete_tags is False
    assert toml.cache_manifest_bytes == 1024
    assert load_config(None, environ={}) == ServerConfig()


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="delete_everything"):
        load_config(TESTFILES / "config" / "unknown-key.yaml", environ={})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(None, {"addr": "nowhere"}, environ={})
    with pytest.raises(ConfigError, match="PYBUILD_READ_ONLY"):
        load_config(None, environ={"PYBUILD_READ_ONLY": "maybe"})
    with pytest.raises(ConfigError, match="both"):
        load_config(None, {"tls_cert": "/x.pem"}, environ={})
