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

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

import prometheus_client
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SIZE_BUCKETS = tuple(float(4**k) for k in range(0, 16))  # 1 B .. 1 GiB, by factors of 4
# The ``le`` label values, spelt as prometheus_client spells them.
_LATENCY_LE = (*map(floatToGoString, _LATENCY_BUCKETS), "+Inf")
_SIZE_LE = (*map(floatToGoString, _SIZE_BUCKETS), "+Inf")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_STORE_GAUGES = (
    ("blobs", "Committed blobs in the store."),
    ("pieces", "Distinct pieces in the store."),
    ("logical_bytes", "Sum of blob sizes."),
    ("physical_bytes", "Bytes the pieces occupy on disk."),
    ("dedup_ratio", "logical_bytes / physical_bytes."),
)


class _Series:
    """One (method, route, status)'s requests: counts per bucket (not cumulative) and sums."""

    __slots__ = ("count", "latency", "latency_sum", "received", "request_size",
                 "response_size", "sent")

    def __init__(self) -> None:
        self.count = 0
        self.latency = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one: +Inf
        self.latency_sum = 0.0
        self.request_size = [0] * (len(_SIZE_BUCKETS) + 1)
        self.received = 0
        self.response_size = [0] * (len(_SIZE_BUCKETS) + 1)
        self.sent = 0


def _buckets(bounds: tuple[str, ...], counts: list[int]) -> list[tuple[str, float]]:
    total = 0
    out = []
    for bound, n in zip(bounds, counts, strict=True):
        total += n
        out.append((bound, float(total)))
    return out


class _RequestCollector:
    """The request metrics (the histograms and the series kept from before), built at
    scrape time from :class:`_Series`: a request then costs a few list increments, where
    prometheus_client's ``Histogram.observe`` takes a lock and walks the buckets, six
    metric updates per request in all (measured: ~6 of the ~120 us of CPU a manifest GET
    took)."""

    def __init__(self, series: dict[tuple[str, str, int], _Series]) -> None:
        self._series = series

    def describe(self) -> list[Metric]:
        return self._families(())

    def collect(self) -> list[Metric]:
        return self._families(list(self._series.items()))

    @staticmethod
    def _families(items: Iterable[tuple[tuple[str, str, int], _Series]]) -> list[Metric]:
        labels = ("method", "route", "status")
        latency = HistogramMetricFamily(
            "pybuild_registry_http_request_duration_seconds",
            "Time from the request's head to the end of the handler (body sent), by route.",
            labels=labels)
        request_size = HistogramMetricFamily(
            "pybuild_registry_http_request_size_bytes", "Request body bytes read, by route.",
            labels=labels)
        response_size = HistogramMetricFamily(
            "pybuild_registry_http_response_size_bytes", "Response body bytes sent, by route.",
            labels=labels)
        requests: dict[tuple[str, str], int] = {}
        count = received = sent = 0
        seconds = 0.0
        for (method, route, status), s in items:
            values = (method, route, str(status))
            latency.add_metric(values, _buckets(_LATENCY_LE, s.latency), s.latency_sum)
            request_size.add_metric(values, _buckets(_SIZE_LE, s.request_size), s.received)
            response_size.add_metric(values, _buckets(_SIZE_LE, s.response_size), s.sent)
            requests[method, values[2]] = requests.get((method, values[2]), 0) + s.count
            count += s.count
            seconds += s.latency_sum
            received += s.received
            sent += s.sent
        by_status = CounterMetricFamily(
            "pybuild_registry_requests", "HTTP requests served, by method and status.",
            labels=("method", "status"))
        for key, n in requests.items():
            by_status.add_metric(key, n)
        return [
            latency, request_size, response_size, by_status,
            SummaryMetricFamily("pybuild_registry_request_seconds", "Time spent in handlers.",
                                count_value=count, sum_value=seconds),
            CounterMetricFamily("pybuild_registry_bytes_received",
                                "Request body bytes received.", value=received),
            CounterMetricFamily("pybuild_registry_bytes_sent", "Response body bytes sent.",
                                value=sent),
        ]


class Metrics:
    """The registry's metrics; updated on the event loop only."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # (method, route, status) -> its series; bounded: methods and routes are fixed
        # sets, statuses HTTP's.
        self._series: dict[tuple[str, str, int], _Series] = {}
        r.register(_RequestCollector(self._series))
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

    def observe(
        self, method: str, route: str | None, status: int, seconds: float, received: int, sent: int
    ) -> None:
        """Count one finished request."""
        if method not in _METHODS:
            method = "other"
        key = (method, route or "other", status)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        s.count += 1
        # A bucket counts the values <= its bound (bisect_left), as prometheus_client's.
        s.latency[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        s.latency_sum += seconds
        s.request_size[bisect_left(_SIZE_BUCKETS, received)] += 1
        s.received += received
        s.response_size[bisect_left(_SIZE_BUCKETS, sent)] += 1
        s.sent += sent

    def render(self, uploads_open: int, stats: Any | None) -> bytes:
        """The exposition text; ``stats`` is ``Store.stats()`` (None: leave the store gauges)."""
        self.uploads_open.set(uploads_open)
        if stats is not None:
            for name, gauge in self.store.items():
                value = getattr(stats, name, None)
                if value is not None:
                    gauge.set(float(value))
        return bytes(generate_latest(self.registry))
