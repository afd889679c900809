"""The local metrics file: a process's current metrics, for a stack that runs without a collector.

Without an OTLP endpoint, every process rewrites ``<data_dir>/metrics-<process>.json``
each export interval (5 s unless ``OTEL_METRIC_EXPORT_INTERVAL`` says otherwise) with
the current value of each of its metrics, and once more when it stops. The values
are cumulative (a counter's total since the process started, a histogram's count, sum
and buckets), so the newest file is all anyone needs: ``sagawire metrics`` reads the
files of a data directory and prints them. A file is replaced whole (written aside,
then renamed), so a reader never sees half of one. It looks like::

    {"service": "payment", "time_ns": 1700000000000000000,
     "metrics": [{"name": "sagawire.action.duration", "unit": "s", "kind": "histogram",
                  "points": [{"attributes": {"saga.action": "charge", ...},
                              "count": 3, "sum": 0.012, "bounds": [...], "counts": [...]}]},
                 {"name": "sagawire.consumer.lag", "unit": "{event}", "kind": "gauge",
                  "points": [{"attributes": {...}, "value": 0}]}]}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.resources import SERVICE_NAME

FILE_PREFIX = "metrics-"
DEFAULT_INTERVAL_MILLIS = 5_000


def metrics_file(data_dir: Path, process: str) -> Path:
    """Where ``process`` keeps its current metrics."""
    return data_dir / f"{FILE_PREFIX}{process}.json"


def metrics_files(data_dir: Path) -> list[Path]:
    """The metrics files of every process that used ``data_dir`` (or one level below)."""
    pattern = f"{FILE_PREFIX}*.json"
    return sorted({*data_dir.glob(pattern), *data_dir.glob(f"*/{pattern}")})


def _kind(data: object) -> str:
    if isinstance(data, Histogram):
        return "histogram"
    if isinstance(data, Sum):
        return "counter" if data.is_monotonic else "updown"
    if isinstance(data, Gauge):
        return "gauge"
    return type(data).__name__.lower()


def _point(point: object) -> dict[str, Any] | None:
    attributes = dict(getattr(point, "attributes", None) or {})
    if isinstance(point, HistogramDataPoint):
        return {
            "attributes": attributes,
            "count": point.count,
            "sum": point.sum,
            "bounds": list(point.explicit_bounds),
            "counts": list(point.bucket_counts),
        }
    if isinstance(point, NumberDataPoint):
        return {"attributes": attributes, "value": point.value}
    return None


def snapshot(data: MetricsData) -> Iterator[dict[str, Any]]:
    """Every metric of ``data`` as the file keeps it."""
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = [p for p in map(_point, metric.data.data_points) if p is not None]
                yield {
                    "name": metric.name,
                    "unit": metric.unit or "",
                    "description": metric.description or "",
                    "kind": _kind(metric.data),
                    "points": points,
                }


class MetricsFileExporter(MetricExporter):
    """Rewrites one process's metrics file with each export (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        service = ""
        for resource in metrics_data.resource_metrics:
            service = str(resource.resource.attributes.get(SERVICE_NAME, service))
        document = {
            "service": service,
            "time_ns": time.time_ns(),
            "metrics": list(snapshot(metrics_data)),
        }
        aside = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            aside.write_text(json.dumps(document, separators=(",", ":"), default=str))
            os.replace(aside, self.path)
        except OSError:
            return MetricExportResult.FAILURE
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def read_metrics_file(path: Path) -> dict[str, Any] | None:
    """A metrics file's document, or None when it cannot be read as one."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None
