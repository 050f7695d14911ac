"""Prometheus metrics, rendered in the text exposition format (no client library needed).

Exposed at ``GET /metrics``::

    pybuild_registry_requests_total{method,status}    counter
    pybuild_registry_request_seconds_sum / _count     summary of handler time
    pybuild_registry_bytes_received_total             request body bytes (uploads, manifests)
    pybuild_registry_bytes_sent_total                 response body bytes
    pybuild_registry_uploads_open                     upload sessions this process holds open
    pybuild_store_blobs / _pieces                     from cas Store.stats()
    pybuild_store_logical_bytes / _physical_bytes
    pybuild_store_dedup_ratio                         logical / physical
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metrics"]


@dataclass
class Metrics:
    """In-process counters; updated on the event loop, so no locking is needed."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    seconds_sum: float = 0.0
    seconds_count: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0

    def observe(self, method: str, status: int, seconds: float, sent: int) -> None:
        self.requests[(method, status)] += 1
        self.seconds_sum += seconds
        self.seconds_count += 1
        self.bytes_sent += sent

    def render(self, uploads_open: int, stats: Any | None) -> str:
        lines = [
            "# HELP pybuild_registry_requests_total HTTP requests served, by method and status.",
            "# TYPE pybuild_registry_requests_total counter",
        ]
        for (method, status), n in sorted(self.requests.items()):
            lines.append(
                f'pybuild_registry_requests_total{{method="{method}",status="{status}"}} {n}'
            )
        lines += [
            "# HELP pybuild_registry_request_seconds Time spent in handlers.",
            "# TYPE pybuild_registry_request_seconds summary",
            f"pybuild_registry_request_seconds_sum {self.seconds_sum:.6f}",
            f"pybuild_registry_request_seconds_count {self.seconds_count}",
            "# HELP pybuild_registry_bytes_received_total Request body bytes received.",
            "# TYPE pybuild_registry_bytes_received_total counter",
            f"pybuild_registry_bytes_received_total {self.bytes_received}",
            "# HELP pybuild_registry_bytes_sent_total Response body bytes sent.",
            "# TYPE pybuild_registry_bytes_sent_total counter",
            f"pybuild_registry_bytes_sent_total {self.bytes_sent}",
            "# HELP pybuild_registry_uploads_open Upload sessions open in this process.",
            "# TYPE pybuild_registry_uploads_open gauge",
            f"pybuild_registry_uploads_open {uploads_open}",
        ]
        if stats is not None:
            for name, help_ in (
                ("blobs", "Committed blobs in the store."),
                ("pieces", "Distinct pieces in the store."),
                ("logical_bytes", "Sum of blob sizes."),
                ("physical_bytes", "Bytes the pieces occupy on disk."),
                ("dedup_ratio", "logical_bytes / physical_bytes."),
            ):
                value = getattr(stats, name, None)
                if value is None:
                    continue
                lines += [
                    f"# HELP pybuild_store_{name} {help_}",
                    f"# TYPE pybuild_store_{name} gauge",
                    f"pybuild_store_{name} {float(value):g}",
                ]
        return "\n".join(lines) + "\n"
