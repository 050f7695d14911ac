"""The metadata database goes away under a running ``pybuild serve``: requests get 503
Service Unavailable with ``Retry-After`` (so clients retry and load balancers fail over),
the error names the unreachable database without its password, the server stays up, and
once PostgreSQL is back the same requests work.

The test runs a PostgreSQL server of its own (testkit.postgres), stopped with
``pg_ctl -m fast``: every connection the registry's pools hold is closed under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.images import Image, make_image, make_layer, tar_files
from testkit.postgres import PostgresServer, postgres_server
from testkit.registries import Response, http, pybuild_configured_registry

pytestmark = pytest.mark.slow

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SECRET = "not-for-clients"  # trust authentication accepts it; no response may show it


def _post_blob(addr: str, data: bytes) -> Response:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    return http(addr, "POST", f"/v2/team/app/blobs/uploads/?digest={digest}", body=data,
                headers={"Content-Type": "application/octet-stream"})


def _assert_database_down(resp: Response, pg: PostgresServer) -> None:
    assert resp.status == 503, resp.body
    assert int(resp.headers["retry-after"]) > 0
    errors = json.loads(resp.body)["errors"]
    assert [e["code"] for e in errors] == ["UNAVAILABLE"]
    message = errors[0]["message"]
    assert "metadata database is unreachable" in message
    assert f"{pg.host}:{pg.port}" in message
    assert SECRET not in resp.body.decode()


def _migrate(url: str) -> None:
    migrate = subprocess.run([sys.executable, "-m", "builder", "storage", "migrate",
                              "--database", url], capture_output=True, text=True,
                             timeout=120, check=False)
    assert migrate.returncode == 0, migrate.stderr


def _push_hello(addr: str) -> Image:
    """Push a one-layer image as team/app:v1; the image."""
    image = make_image([make_layer(tar_files({"hello.txt": b"hello\n"}))])
    for blob in (image.config, image.layers[0].blob):
        assert _post_blob(addr, blob).status == 201
    put = http(addr, "PUT", "/v2/team/app/manifests/v1", body=image.manifest,
               headers={"Content-Type": MANIFEST})
    assert put.status == 201, put.body
    return image


def test_a_stopped_database_is_503_with_retry_after_and_serving_resumes(tmp_path: Path) -> None:
    with postgres_server() as pg:
        url = pg.create_database("down").replace(f"{pg.user}@", f"{pg.user}:{SECRET}@")
        _migrate(url)
        with pybuild_configured_registry(tmp_path / "a", {"database": {"url": url}}) as reg:
            image = _push_hello(reg.addr)

            pg.stop()
            for _ in range(2):  # the first request meets a dead pooled connection, later ones none
                _assert_database_down(http(reg.addr, "GET", "/v2/team/app/manifests/v1",
                                           headers={"Accept": MANIFEST}, timeout=120), pg)
                _assert_database_down(_post_blob(reg.addr, os.urandom(100_000)), pg)
            assert http(reg.addr, "GET", "/v2/").status == 200  # still serving
            # ... and says to the load balancer's health check that it cannot serve
            assert http(reg.addr, "GET", "/healthz", timeout=30).status == 503

            pg.start()
            got = http(reg.addr, "GET", "/v2/team/app/manifests/v1", headers={"Accept": MANIFEST})
            assert got.status == 200 and got.body == image.manifest
            assert http(reg.addr, "GET", "/healthz").status == 200
            data = os.urandom(100_000)
            assert _post_blob(reg.addr, data).status == 201
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            assert http(reg.addr, "GET", f"/v2/team/app/blobs/{digest}").body == data


def test_health_storagedriver_takes_the_replica_out_while_the_database_is_down(tmp_path: Path) -> None:
    # Distribution's config.yml as Debian ships it turns on health.storagedriver: after
    # `threshold` failed checks every request, /v2/ (the load balancer's check) too, is
    # 503, as Distribution answers with a storage driver that fails; then it comes back.
    with postgres_server() as pg:
        url = pg.create_database("health")
        _migrate(url)
        settings = {"version": "0.1", "database": {"url": url},
                    "health": {"storagedriver": {"enabled": True, "interval": "200ms", "threshold": 2}}}
        with pybuild_configured_registry(tmp_path / "a", settings) as reg:
            assert http(reg.addr, "GET", "/v2/").status == 200
            pg.stop()
            deadline = time.monotonic() + 60
            while (got := http(reg.addr, "GET", "/v2/", timeout=30)).status == 200 and time.monotonic() < deadline:
                time.sleep(0.1)  # the check runs every 200ms: wait for its verdict
            assert got.status == 503, got.body
            errors = json.loads(got.body)["errors"]
            assert [e["code"] for e in errors] == ["UNAVAILABLE"]
            assert errors[0]["detail"] == "health check failed: please see /debug/health"
            pg.start()
            deadline = time.monotonic() + 60
            while (got := http(reg.addr, "GET", "/v2/", timeout=30)).status != 200 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert got.status == 200, got.body


def test_a_database_restarted_while_the_registry_was_idle_costs_no_request(tmp_path: Path) -> None:
    # The restart closes every connection the registry's pools hold, without the registry
    # seeing it; the next requests must get fresh connections, not a 503 each.
    with postgres_server() as pg:
        url = pg.create_database("restarted")
        _migrate(url)
        with pybuild_configured_registry(tmp_path / "a", {"database": {"url": url}}) as reg:
            image = _push_hello(reg.addr)

            pg.stop()
            pg.start()
            for _ in range(3):
                got = http(reg.addr, "GET", "/v2/team/app/manifests/v1", headers={"Accept": MANIFEST})
                assert got.status == 200 and got.body == image.manifest, got.body
                data = os.urandom(100_000)
                assert _post_blob(reg.addr, data).status == 201


def test_a_dead_pooled_connection_is_seen_on_any_descriptor() -> None:
    # A busy replica holds more than 1024 descriptors; select() cannot watch those.
    import resource
    import socket
    from types import SimpleNamespace

    from cas.pg_db import closed_by_server

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    ours, server = socket.socketpair()
    fd = os.dup2(ours.fileno(), 1500)
    try:
        conn = SimpleNamespace(closed=False, fileno=lambda: fd)
        assert not closed_by_server(conn)  # idle, nothing to read
        server.close()  # the server's side goes away
        assert closed_by_server(conn)
    finally:
        os.close(fd)
        ours.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
