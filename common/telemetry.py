"""OpenTelemetry for every process: trace context propagation through event headers.

(Provider setup, exporters and instrumentation are added by the telemetry issue.)
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry.propagate import extract, inject


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (traceparent, tracestate) to ``headers``."""
    inject(headers)
    return headers


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context carried by an event's headers."""
    return extract(dict(headers))
