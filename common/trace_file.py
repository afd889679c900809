"""The local trace file: finished spans as JSON lines, for a stack that runs without a collector.

Every process of a local stack appends to ``<data_dir>/traces.jsonl``. Each exported
batch of spans, one line each, is written with a single ``os.write`` on an ``O_APPEND``
descriptor, so lines from several processes never interleave and nothing is buffered in the
process: a span is on disk as soon as it is exported. A line looks like::

    {"trace_id": "4bf9...", "span_id": "00f0...", "parent_span_id": null,
     "name": "/sagawire.v1.Participant/Execute", "kind": "SERVER", "service": "inventory",
     "start_ns": 1700000000000000000, "end_ns": 1700000000004000000,
     "status": "UNSET", "status_message": "", "attributes": {...},
     "events": [{"name": ..., "time_ns": ..., "attributes": {...}}],
     "links": [{"trace_id": ..., "span_id": ..., "attributes": {...}}]}

:func:`read_span_lines` reads them back (``sagawire trace``), skipping a torn last line.

The file is capped: once it reaches ``max_bytes``, the process that notices moves it
to ``traces.1.jsonl`` (replacing the previous one) and starts a new one; the others
notice the new file at their next export and follow. So a long-running stack keeps at
most about twice the cap on disk, and ``sagawire trace`` reads both files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

TRACE_FILE_NAME = "traces.jsonl"
DEFAULT_MAX_BYTES = 100 << 20
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT
_SEQUENCES = (tuple, list)
# One encoder for every line (json.dumps with options builds a new one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def _hex_trace(trace_id: int) -> str:
    return format(trace_id, "032x")


def _hex_span(span_id: int) -> str:
    return format(span_id, "016x")


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    # Attribute values are str, bool, int, float or sequences of them; the SDK stores a
    # sequence as a tuple. Concrete types here: an ABC isinstance per value costs more.
    if not attributes:
        return {}
    return {k: list(v) if type(v) in _SEQUENCES else v for k, v in attributes.items()}


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """One finished span as the JSON object of a trace-file line."""
    context = span.get_span_context()
    assert context is not None  # a recorded span always has one
    parent = span.parent
    return {
        "trace_id": _hex_trace(context.trace_id),
        "span_id": _hex_span(context.span_id),
        "parent_span_id": _hex_span(parent.span_id) if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": str(span.resource.attributes.get(SERVICE_NAME, "")),
        "start_ns": span.start_time or 0,
        "end_ns": span.end_time or span.start_time or 0,
        "status": span.status.status_code.name,
        "status_message": span.status.description or "",
        "attributes": _attributes(span.attributes),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": _attributes(e.attributes)}
            for e in span.events
        ],
        "links": [
            {
                "trace_id": _hex_trace(link.context.trace_id),
                "span_id": _hex_span(link.context.span_id),
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ],
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends each exported span to a JSON-lines file (see the module docstring)."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rotated_path = path.with_name(f"{path.stem}.1{path.suffix}")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd: int | None = os.open(path, _FLAGS, 0o644)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode = _ENCODER.encode
        # Whole lines in one write: an O_APPEND write to a regular file is not interleaved
        # with other processes' writes, and one system call per batch is cheaper than one
        # per span.
        data = "".join([encode(span_to_dict(s)) + "\n" for s in spans]).encode()
        with self._lock:
            if self._fd is None:
                return SpanExportResult.FAILURE
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
                self._fd = self._rotated(self._fd)
            except OSError:
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _rotated(self, fd: int) -> int:
        """The descriptor to write to next: ``fd``, or the new file after a rotation
        (made here when the file is full, or by another process)."""
        mine = os.fstat(fd)
        if mine.st_size < self.max_bytes and _inode(self.path) == mine.st_ino:
            return fd
        # Processes rotate one at a time, and only the file they write to, so a
        # rotation is never repeated on the new file by a process that saw the old one.
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _inode(self.path) == mine.st_ino:
                os.replace(self.path, self.rotated_path)
            new_fd = os.open(self.path, _FLAGS, 0o644)
        os.close(fd)
        return new_fd

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True  # nothing is buffered: every line was written by export()

    def shutdown(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _inode(path: Path) -> int | None:
    with contextlib.suppress(FileNotFoundError):
        return os.stat(path).st_ino
    return None


def read_span_lines(path: Path, must_contain: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """The span objects of one trace file; lines that are not spans are skipped.

    With ``must_contain``, only lines containing one of those strings are parsed
    (a cheap filter before JSON decoding, for large files).
    """
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if must_contain and not any(text in line for text in must_contain):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if isinstance(record, dict) and "trace_id" in record and "span_id" in record:
                yield record
