"""Structured logging: one ``key=value`` line per record, on stderr.

What a caller sent reaches a log line only through :func:`printable` (bounded, escaped,
so no request can forge a line or fill the disk), and what any caller can repeat at
will is logged through a :class:`Throttle`.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


# How much of a caller-supplied string a log line shows.
PRINTABLE_LIMIT = 200


def printable(value: str, limit: int = PRINTABLE_LIMIT) -> str:
    """``value`` as a log line may show it: quoted and escaped like ``repr`` (a newline or
    a control character cannot start a forged line), at most ``limit`` characters of it,
    followed by how many more there were."""
    shown = repr(value[:limit])
    if len(value) > limit:
        shown += f"+{len(value) - limit}chars"
    return shown


@dataclass
class _Held:
    logged_at: float
    suppressed: int = 0


class Throttle:
    """At most one line per key every ``interval`` seconds; the next line that goes out
    says how many were held back (``suppressed=N``). Keys must be few (method names)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._held: dict[str, _Held] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        held = self._held.get(key)
        if held is not None and now - held.logged_at < self._interval:
            held.suppressed += 1
            return
        suppressed = held.suppressed if held is not None else 0
        self._held[key] = _Held(now)
        if suppressed:
            message, args = f"{message} suppressed=%d", (*args, suppressed)
        self._log.warning(message, *args)
