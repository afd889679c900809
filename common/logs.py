"""Structured logging: one ``key=value`` line per record, on stderr."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from opentelemetry import trace

_FORMAT = (
    "%(asctime)s level=%(levelname)s service=%(service)s logger=%(name)s%(trace_fields)s"
    " %(message)s"
)


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        return True


class TraceFilter(logging.Filter):
    """Adds the current span's ``trace_id`` and ``span_id`` (hex) to each record.

    ``trace_fields`` renders them as `` trace_id=... span_id=...``, or as nothing
    outside a span, so a saga's log lines can be found by its trace id.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else ""
        span_id = format(context.span_id, "016x") if context.is_valid else ""
        record.trace_id, record.span_id = trace_id, span_id
        record.trace_fields = f" trace_id={trace_id} span_id={span_id}" if trace_id else ""
        return True


def log_handler(service: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing this format (stderr by default), tagged with the service name."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_ServiceFilter(service))
    handler.addFilter(TraceFilter())
    return handler


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send this process's logs to stderr, each line tagged with the service name."""
    root = logging.getLogger()
    root.handlers[:] = [log_handler(service)]
    root.setLevel(level)
