"""docs/deployment.md works as written: its registry config loads to the settings it
describes, its HAProxy config passes ``haproxy -c`` and routes blob GETs as the replicas
tests and bench do, and its commands run against a real
PostgreSQL (only the database address and the storage directory substituted)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

from testkit.haproxy import BLOB_PATH
from testkit.postgres import PostgresServer
from testkit.tools import require_tool

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_registry_config_means_what_the_page_says(tmp_path: Path) -> None:
    from registry.server.config import load_config
    from registry.server.health import StorageCheck

    (block,) = _blocks("yaml")
    path = tmp_path / "config.yml"
    path.write_text(block)
    config = load_config(path, environ={})
    assert config.addr == ":5000"
    assert config.storage == Path("/srv/pybuild")
    assert config.delete_manifests and config.delete_blobs
    assert config.auth_htpasswd == Path("/etc/pybuild/htpasswd")
    assert config.http_headers == (("X-Content-Type-Options", "nosniff"),)
    assert config.health_storagedriver == StorageCheck(interval=10.0, threshold=3)
    assert config.database == ("host='db.internal' port='5432' user='registry' password='change-me' "
                               "dbname='registry' sslmode='verify-full'")


def test_the_haproxy_config_is_valid(tmp_path: Path) -> None:
    haproxy = require_tool("haproxy")
    (block,) = _blocks("haproxy")
    pem = tmp_path / "registry.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-subj", "/CN=registry.test", "-days", "1", "-keyout", str(pem), "-out", str(pem)],
                   check=True, capture_output=True, timeout=60)
    path = tmp_path / "haproxy.cfg"
    path.write_text(block.replace("/etc/haproxy/registry.pem", str(pem)))
    checked = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_blob_routing_is_the_one_the_replicas_tests_run() -> None:
    (block,) = _blocks("haproxy")
    assert f"acl blob_path path_reg {BLOB_PATH}\n" in block
    assert "backend blobs\n  balance uri\n  hash-type consistent\n" in block
    blob = re.compile(BLOB_PATH)
    for path in (f"/v2/team/app/blobs/sha256:{'a' * 64}", f"/v2/a/b/c/blobs/sha512:{'0' * 128}",
                 f"/v2/x/blobs/blake3:{'f' * 64}"):
        assert blob.match(path), path
    for path in ("/v2/team/app/blobs/uploads/", "/v2/team/app/blobs/uploads/4d2c1e0a-77b1",
                 f"/v2/team/app/manifests/sha256:{'a' * 64}", "/v2/", "/v2/team/app/tags/list"):
        assert not blob.match(path), path


def test_the_commands_run(postgres: PostgresServer, tmp_path: Path) -> None:
    url = postgres.create_database(f"docs_{uuid.uuid4().hex[:12]}")
    lines = [line for block in _blocks("sh") for line in block.splitlines() if line.startswith("pybuild ")]
    assert [line.split()[2] for line in lines] == ["migrate", "gc", "fsck"]
    env = {**os.environ, "PYBUILD_DATABASE_URL": url}
    for line in lines:
        argv = shlex.split(line.replace("/srv/pybuild", str(tmp_path / "storage")).replace(
            "postgresql://registry:change-me@db.internal/registry", url))
        argv = [a if a != "$PYBUILD_DATABASE_URL" else url for a in argv]
        done = subprocess.run([sys.executable, "-m", "builder", *argv[1:]], capture_output=True,
                              text=True, timeout=300, env=env, check=False)
        assert done.returncode == 0, f"{line}\n{done.stdout}{done.stderr}"
