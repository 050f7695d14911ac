"""Benchmark results: one ``Measurement`` per metric, printed as a table and saved as JSON.

Each measurement holds one value per target (``distribution``, ``pybuild``, ...). The
*ratio* compares pybuild with the peer so that above 1 always means pybuild is better:
``pybuild / peer`` for rates (MB/s, requests/s), ``peer / pybuild`` for costs (seconds,
latency).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.machine import MachineLimits

__all__ = ["RESULTS_DIR", "Measurement", "Report"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Measurement:
    """One metric measured on several targets. ``higher_is_better`` is False for times."""

    name: str
    unit: str
    higher_is_better: bool = True
    values: dict[str, float] = field(default_factory=dict)
    notes: str = ""

    def ratio(self, target: str, peer: str) -> float | None:
        """``target`` relative to ``peer``, > 1 when ``target`` is better; None if unknown."""
        a, b = self.values.get(target), self.values.get(peer)
        if a is None or b is None or a == 0 or b == 0:
            return None
        return a / b if self.higher_is_better else b / a

    def to_json(self, peer: str, target: str) -> dict[str, object]:
        return {
            "name": self.name,
            "unit": self.unit,
            "higher_is_better": self.higher_is_better,
            "values": self.values,
            "ratio": self.ratio(target, peer),
            "notes": self.notes,
        }


@dataclass
class Report:
    """The results of one ``python3 -m bench <area>`` run."""

    area: str
    peer: str
    target: str = "pybuild"
    machine: MachineLimits | None = None
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, object] = field(default_factory=dict)
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    )

    def add(self, measurements: Sequence[Measurement]) -> None:
        """Merge ``measurements`` in: values of a metric already present are combined."""
        for m in measurements:
            existing = next((e for e in self.measurements if e.name == m.name), None)
            if existing is None:
                self.measurements.append(m)
            else:
                existing.values.update(m.values)

    def to_json(self) -> dict[str, object]:
        return {
            "area": self.area,
            "started": self.started,
            "host": {"python": platform.python_version(), "platform": platform.platform()},
            "machine": self.machine.to_json() if self.machine else None,
            "peer": self.peer,
            "target": self.target,
            "parameters": self.parameters,
            "skipped": self.skipped,
            "failed": self.failed,
            "measurements": [m.to_json(self.peer, self.target) for m in self.measurements],
        }

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        """Write ``<area>-<start time>.json`` into ``directory``; return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.area}-{self.started}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """A plain-text table: one row per metric, one column per target, then the ratio."""
        targets = [self.peer, self.target]
        for m in self.measurements:
            for t in m.values:
                if t not in targets:
                    targets.append(t)
        header = ["metric", "unit", *targets, f"{self.target}/{self.peer}"]
        rows = [header]
        for m in self.measurements:
            ratio = m.ratio(self.target, self.peer)
            rows.append(
                [m.name, m.unit]
                + [_fmt(m.values.get(t)) for t in targets]
                + ["-" if ratio is None else f"{ratio:.2f}x"]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        if self.machine:
            mm = self.machine
            lines.append(
                f"machine: {mm.cpus} CPUs, SHA-256 {mm.sha256_mb_s:.0f} MB/s, "
                f"BLAKE3 {mm.blake3_mb_s:.0f} MB/s (1 thread), disk write+fsync "
                f"{mm.disk_write_fsync_mb_s:.0f} MB/s, page-cache read {mm.page_cache_read_mb_s:.0f} MB/s"
            )
        for i, row in enumerate(rows):
            lines.append(
                "  ".join(
                    cell.ljust(widths[j]) if j < 2 else cell.rjust(widths[j])
                    for j, cell in enumerate(row)
                )
            )
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for target, why in self.skipped.items():
            lines.append(f"{target}: not measured: {why}")
        for target, why in self.failed.items():
            lines.append(f"{target}: FAILED: {why}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"
