"""Prometheus metrics on the debug server (``http.debug.addr``), not on the registry port."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cas import Digest
from registry import oci
from registry.server import ConfigError, ServerConfig, load_config, make_app
from registry.server.debug import make_debug_app

from .helpers import push_image

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, labels in the order the exposition writes them."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@pytest.fixture
async def registry_and_debug(aiohttp_client, tmp_path: Path):
    config = ServerConfig()
    app = make_app(config, storage=tmp_path / "storage")
    client = await aiohttp_client(app)
    debug = await aiohttp_client(make_debug_app(app, config))
    return client, debug


async def test_debug_server_histograms_count_the_requests(registry_and_debug):
    client, debug = registry_and_debug
    layer = b"a layer for the metrics" * 500
    await push_image(client, "m/app", "v1", [layer])
    for _ in range(3):
        resp = await client.get("/v2/m/app/manifests/v1", headers={"Accept": oci.OCI_MANIFEST})
        assert resp.status == 200
        await resp.read()
    assert await (await client.get(f"/v2/m/app/blobs/{Digest.of(layer)}")).read() == layer
    assert (await client.get("/v2/m/app/manifests/nope")).status == 404

    resp = await debug.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    m = parse_metrics(await resp.text())
    duration = "pybuild_registry_http_request_duration_seconds"
    labels = '{method="GET",route="manifest",status="200"}'
    assert m[f"{duration}_count{labels}"] == 3
    assert m[f'{duration}_bucket{{le="+Inf",method="GET",route="manifest",status="200"}}'] == 3
    assert m[f"{duration}_sum{labels}"] > 0
    assert m[f'{duration}_count{{method="GET",route="manifest",status="404"}}'] == 1
    # Two blobs (config, layer) were pushed monolithically, one manifest by PUT.
    posts = '{method="POST",route="upload-start",status="201"}'
    assert m[f"pybuild_registry_http_request_size_bytes_count{posts}"] == 2
    assert m[f"pybuild_registry_http_request_size_bytes_sum{posts}"] >= len(layer)
    assert m['pybuild_registry_http_request_size_bytes_count{method="PUT",route="manifest",status="201"}'] == 1
    assert m['pybuild_registry_http_response_size_bytes_sum{method="GET",route="blob",status="200"}'] == len(layer)
    # The metrics kept from before the histograms.
    assert m['pybuild_registry_requests_total{method="GET",status="200"}'] == 4
    assert m["pybuild_registry_request_seconds_count"] >= 7
    assert m["pybuild_registry_bytes_received_total"] >= len(layer)
    assert m["pybuild_registry_bytes_sent_total"] >= len(layer)
    assert m["pybuild_registry_uploads_open"] == 0
    assert m["pybuild_store_blobs"] == 3  # config, layer and the manifest
    # Process metrics, from prometheus_client's collectors.
    assert m["process_resident_memory_bytes"] > 0
    assert any(k.startswith("python_info{") for k in m)
    assert not any(k.endswith("_created") or "_created{" in k for k in m)
    # The debug server has the health check too.
    assert (await debug.get("/healthz")).status == 200


async def test_registry_port_has_no_metrics_unless_switched_on(make_client):
    client = await make_client()
    assert (await client.get("/metrics")).status == 404
    compat = await make_client(http_debug_prometheus_on_registry_port=True)
    resp = await compat.get("/metrics")
    assert resp.status == 200
    assert "pybuild_registry_http_request_duration_seconds" in await resp.text()


async def test_unknown_methods_and_paths_keep_labels_bounded(registry_and_debug):
    client, debug = registry_and_debug
    for i in range(5):
        await client.request("BREW", f"/v2/x/coffee{i}")
        await client.get(f"/nothing/here/{i}")
    m = parse_metrics(await (await debug.get("/metrics")).text())
    counts = [k for k in m if k.startswith("pybuild_registry_http_request_duration_seconds_count")]
    routes = {re.search(r'route="([^"]*)"', k).group(1) for k in counts}
    methods = {re.search(r'method="([^"]*)"', k).group(1) for k in counts}
    assert routes <= {"other", "manifest", "blob"}, routes
    assert "BREW" not in methods


async def test_custom_prometheus_path_and_disabled(aiohttp_client, tmp_path):
    config = dataclasses.replace(ServerConfig(), http_debug_prometheus_path="/debug/metrics")
    app = make_app(config, storage=tmp_path / "s")
    await aiohttp_client(app)
    debug = await aiohttp_client(make_debug_app(app, config))
    assert (await debug.get("/debug/metrics")).status == 200
    assert (await debug.get("/metrics")).status == 404
    off = dataclasses.replace(config, http_debug_prometheus_enabled=False)
    debug_off = await aiohttp_client(make_debug_app(app, off))
    assert (await debug_off.get("/debug/metrics")).status == 404


def test_debug_config_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "http:\n  debug:\n    addr: 127.0.0.1:5001\n    prometheus:\n"
        "      enabled: true\n      path: /m\n      on_registry_port: true\n"
    )
    config = load_config(path, environ={})
    assert config.http_debug_addr == "127.0.0.1:5001"
    assert config.http_debug_prometheus_path == "/m"
    assert config.http_debug_prometheus_on_registry_port is True
    assert load_config(environ={"PYBUILD_HTTP_DEBUG_ADDR": "127.0.0.1:7"}).http_debug_addr == "127.0.0.1:7"
    with pytest.raises(ConfigError, match="invalid address"):
        load_config(environ={"PYBUILD_HTTP_DEBUG_ADDR": "nope"})
    path.write_text("http:\n  debug:\n    prometheus:\n      path: metrics\n")
    with pytest.raises(ConfigError, match="must start with '/'"):
        load_config(path, environ={})


def test_request_histograms_match_prometheus_client_histograms():
    """The request series are kept as plain counts and built at scrape time (cheaper per
    request); prometheus_client's own Histogram and Counter are the oracle for the text."""
    import prometheus_client

    from registry.server.metrics import _LATENCY_BUCKETS, _SIZE_BUCKETS, Metrics

    ours = Metrics()
    ref = prometheus_client.CollectorRegistry()
    labels = ("method", "route", "status")
    latency = prometheus_client.Histogram("pybuild_registry_http_request_duration_seconds", "",
                                          labels, buckets=_LATENCY_BUCKETS, registry=ref)
    request_size = prometheus_client.Histogram("pybuild_registry_http_request_size_bytes", "",
                                               labels, buckets=_SIZE_BUCKETS, registry=ref)
    response_size = prometheus_client.Histogram("pybuild_registry_http_response_size_bytes", "",
                                                labels, buckets=_SIZE_BUCKETS, registry=ref)
    requests = prometheus_client.Counter("pybuild_registry_requests", "", ("method", "status"),
                                         registry=ref)
    # Values on bucket bounds, between them, past the last one, and zero.
    cases = [("GET", "manifest", 200, 0.001, 0, 1), ("GET", "manifest", 200, 0.0007, 4, 5),
             ("PUT", "upload", 201, 61.0, 1 << 31, 0), ("GET", None, 404, 0.0, 1, 1 << 30),
             ("BREW", "blob", 405, 2.5, 16, 17), ("GET", "blob", 200, 0.0005, 0, 4**15)]
    for method, route, status, seconds, received, sent in cases:
        ours.observe(method, route, status, seconds, received, sent)
        m = method if method in ("GET", "PUT") else "other"
        values = (m, route or "other", str(status))
        latency.labels(*values).observe(seconds)
        request_size.labels(*values).observe(received)
        response_size.labels(*values).observe(sent)
        requests.labels(m, str(status)).inc()
    expected = parse_metrics(prometheus_client.generate_latest(ref).decode())
    got = parse_metrics(ours.render(0, None).decode())
    assert expected  # the oracle produced samples
    assert {k: v for k, v in got.items() if k in expected} == expected
    assert set(expected) <= set(got)
    assert got["pybuild_registry_request_seconds_count"] == len(cases)
    assert got["pybuild_registry_request_seconds_sum"] == pytest.approx(sum(c[3] for c in cases))
    assert got["pybuild_registry_bytes_received_total"] == sum(c[4] for c in cases)
    assert got["pybuild_registry_bytes_sent_total"] == sum(c[5] for c in cases)
