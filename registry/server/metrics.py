"""Prometheus metrics (``prometheus_client``), one collector registry per application.

Served by the debug server (``http.debug.addr``, see :mod:`registry.server.debug`), as
CNCF Distribution serves them, and on the registry's own port only when
``http.debug.prometheus.on_registry_port`` is on (the former ``GET /metrics``)::

    pybuild_registry_http_request_duration_seconds{method,route,status}  histogram
    pybuild_registry_http_request_size_bytes{method,route,status}        histogram (body bytes read)
    pybuild_registry_http_response_size_bytes{method,route,status}       histogram (body bytes sent)
    pybuild_registry_requests_total{method,status}     counter (kept from before)
    pybuild_registry_request_seconds_sum / _count      summary of handler time (kept)
    pybuild_registry_bytes_received_total              request body bytes (kept)
    pybuild_registry_bytes_sent_total                  response body bytes (kept)
    pybuild_registry_uploads_open                      upload sessions this process holds open
    pybuild_registry_notifications_total{endpoint,outcome}   events sent/failed/dropped
    pybuild_registry_notifications_pending{endpoint}   events waiting for their endpoint
    pybuild_store_blobs / _pieces                      from cas Store.stats()
    pybuild_store_logical_bytes / _physical_bytes
    pybuild_store_dedup_ratio                          logical / physical
    process_* python_* python_gc_*                     prometheus_client's process collectors

``route`` is the name of the route table's row (``manifest``, ``blob``, ``upload``, ...),
``other`` for paths outside it, so the label sets stay bounded whatever clients send.
``*_created`` series are turned off: they double the output and nobody graphs them.
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = tuple(float(4**k) for k in range(0, 16))  # 1 B .. 1 GiB, by factors of 4
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STORE_GAUGES = (
    ("blobs", "Committed blobs in the store."),
    ("pieces", "Distinct pieces in the store."),
    ("logical_bytes", "Sum of blob sizes."),
    ("physical_bytes", "Bytes the pieces occupy on disk."),
    ("dedup_ratio", "logical_bytes / physical_bytes."),
)


class Metrics:
    """The registry's metrics; updated on the event loop only."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        labels = ("method", "route", "status")
        self.latency = Histogram(
            "pybuild_registry_http_request_duration_seconds",
            "Time from the request's head to the end of the handler (body sent), by route.",
            labels, buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.request_size = Histogram(
            "pybuild_registry_http_request_size_bytes", "Request body bytes read, by route.",
            labels, buckets=_SIZE_BUCKETS, registry=r,
        )
        self.response_size = Histogram(
            "pybuild_registry_http_response_size_bytes", "Response body bytes sent, by route.",
            labels, buckets=_SIZE_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "pybuild_registry_requests", "HTTP requests served, by method and status.",
            ("method", "status"), registry=r,
        )
        self.seconds = Summary("pybuild_registry_request_seconds", "Time spent in handlers.", registry=r)
        self.bytes_received = Counter(
            "pybuild_registry_bytes_received", "Request body bytes received.", registry=r
        )
        self.bytes_sent = Counter("pybuild_registry_bytes_sent", "Response body bytes sent.", registry=r)
        self.uploads_open = Gauge(
            "pybuild_registry_uploads_open", "Upload sessions open in this process.", registry=r
        )
        self.notifications = Counter(
            "pybuild_registry_notifications",
            "Notification events by endpoint and outcome (sent, failed attempt, dropped).",
            ("endpoint", "outcome"), registry=r,
        )
        self.notifications_pending = Gauge(
            "pybuild_registry_notifications_pending", "Events waiting to be sent, by endpoint.",
            ("endpoint",), registry=r,
        )
        self.store = {
            name: Gauge(f"pybuild_store_{name}", help_, registry=r) for name, help_ in _STORE_GAUGES
        }
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # Label children by key: .labels() costs more than the observation itself.
        self._children: dict[tuple[str, str, int], tuple[Any, Any, Any, Any]] = {}

    def observe(
        self, method: str, route: str | None, status: int, seconds: float, received: int, sent: int
    ) -> None:
        """Count one finished request."""
        if method not in _METHODS:
            method = "other"
        key = (method, route or "other", status)
        children = self._children.get(key)
        if children is None:
            if len(self._children) > 10_000:  # statuses are bounded; this is a safety net
                self._children.clear()
            values = (key[0], key[1], str(status))
            children = self._children[key] = (
                self.latency.labels(*values),
                self.request_size.labels(*values),
                self.response_size.labels(*values),
                self.requests.labels(method, str(status)),
            )
        latency, request_size, response_size, requests = children
        latency.observe(seconds)
        request_size.observe(received)
        response_size.observe(sent)
        requests.inc()
        self.seconds.observe(seconds)
        if received:
            self.bytes_received.inc(received)
        if sent:
            self.bytes_sent.inc(sent)

    def render(self, uploads_open: int, stats: Any | None) -> bytes:
        """The exposition text; ``stats`` is ``Store.stats()`` (None: leave the store gauges)."""
        self.uploads_open.set(uploads_open)
        if stats is not None:
            for name, gauge in self.store.items():
                value = getattr(stats, name, None)
                if value is not None:
                    gauge.set(float(value))
        return bytes(generate_latest(self.registry))
