"""``sagawire trace SAGA_ID``: draw a saga's trace as a waterfall in the terminal.

The spans come from the local trace files (``<data>/*.jsonl``, written by every
process of a stack that runs without a collector) or, with ``--jaeger URL``, from
Jaeger's HTTP query API. A saga is found by its ``saga.id`` span attribute (the
coordinator's saga and step spans and every event span carry it) or by its trace id.

One line per span, parents before children, siblings by start time then span id::

    SERVICE      SPAN                      START     DURATION  TIMELINE      STATUS
    coordinator  saga place_order          +0.0 ms   30.0 ms   |██████████|  ok
    coordinator    step reserve_stock #1   +1.0 ms   9.0 ms    |███       |  ok

Every attempt of a step or compensation has its line with its number and outcome, in
both modes: the coordinator's attempts in orchestration, the services' reaction
attempts in choreography (``payment  step charge_payment #2 ... error transient``).
"""

from __future__ import annotations

import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from common.trace_file import read_span_lines

_GRPC_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
# Jaeger tags that are span fields in OpenTelemetry, not attributes.
_JAEGER_FIELD_TAGS = frozenset(
    {"span.kind", "otel.status_code", "otel.status_description", "error", "internal.span.format"}
)
_BAR, _GAP = "█", " "
_MAX_NAME = 72


@dataclass(frozen=True)
class SpanRecord:
    """One finished span, whichever source it came from."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    kind: str
    start_ns: int
    end_ns: int
    status: str  # "OK", "ERROR" or "UNSET"
    attributes: Mapping[str, Any]

    @property
    def label(self) -> str:
        """The span's name; a step attempt's with its number (``step charge_payment #2``),
        whether the coordinator ran it or a service reacting to an event."""
        attempt = self.attributes.get("saga.attempt")
        if isinstance(attempt, int) and self.attributes.get("saga.step") is not None:
            return f"{self.name} #{attempt}"
        return self.name

    @property
    def status_label(self) -> str:
        """ "ok", or what went wrong: "error", the gRPC code, the saga outcome."""
        words = ["error"] if self.status == "ERROR" else []
        code = self.attributes.get("rpc.grpc.status_code")
        if isinstance(code, int) and code != 0:
            words.append(_GRPC_CODES.get(code, str(code)))
        outcome = self.attributes.get("saga.outcome")
        if outcome and outcome != "ok":
            words.append(str(outcome))
        return " ".join(words) or "ok"


# --- sources -----------------------------------------------------------------------


def span_from_file(record: Mapping[str, Any]) -> SpanRecord:
    """A span from a line of a local trace file (see :mod:`common.trace_file`)."""
    return SpanRecord(
        trace_id=str(record["trace_id"]),
        span_id=str(record["span_id"]),
        parent_id=record.get("parent_span_id") or None,
        name=str(record.get("name", "")),
        service=str(record.get("service", "")),
        kind=str(record.get("kind", "INTERNAL")),
        start_ns=int(record.get("start_ns", 0)),
        end_ns=int(record.get("end_ns", 0)),
        status=str(record.get("status", "UNSET")),
        attributes=dict(record.get("attributes") or {}),
    )


def trace_files(data_dir: Path) -> list[Path]:
    """The trace files of every process that used ``data_dir`` (or one level below it)."""
    return sorted({*data_dir.glob("*.jsonl"), *data_dir.glob("*/*.jsonl")})


def _is_trace_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text.lower())


def load_local(data_dir: Path, saga_or_trace_id: str) -> list[SpanRecord]:
    """Every span of the traces of a saga (or of one trace id) found in the local files."""
    files = trace_files(data_dir)
    wanted = saga_or_trace_id.lower() if _is_trace_id(saga_or_trace_id) else saga_or_trace_id
    # Two passes that parse only lines mentioning what they look for: the files of a
    # long-running stack can be large.
    trace_ids = {
        record["trace_id"]
        for path in files
        for record in read_span_lines(path, must_contain=(wanted,))
        if record["trace_id"] == wanted or (record.get("attributes") or {}).get("saga.id") == wanted
    }
    if not trace_ids:
        return []
    return [
        span_from_file(record)
        for path in files
        for record in read_span_lines(path, must_contain=tuple(sorted(trace_ids)))
        if record["trace_id"] in trace_ids
    ]


def spans_from_jaeger(document: Mapping[str, Any]) -> list[SpanRecord]:
    """The spans of a Jaeger query API answer (``{"data": [trace, ...]}``)."""
    spans: list[SpanRecord] = []
    for trace in document.get("data") or []:
        processes = trace.get("processes") or {}
        for span in trace.get("spans") or []:
            trace_id = str(span["traceID"]).lower().zfill(32)
            tags = {t["key"]: t.get("value") for t in span.get("tags") or []}
            parents = [
                r["spanID"]
                for r in span.get("references") or []
                if r.get("refType") == "CHILD_OF"
                and str(r.get("traceID", "")).lower().zfill(32) == trace_id
            ]
            parent = parents[0] if parents else span.get("parentSpanID")
            status = str(tags.get("otel.status_code", "UNSET")).upper()
            if tags.get("error") is True and status == "UNSET":
                status = "ERROR"
            start_ns = int(span["startTime"]) * 1000
            process = processes.get(span.get("processID"), {})
            spans.append(
                SpanRecord(
                    trace_id=trace_id,
                    span_id=str(span["spanID"]).lower().zfill(16),
                    parent_id=str(parent).lower().zfill(16) if parent else None,
                    name=str(span.get("operationName", "")),
                    service=str(process.get("serviceName", "")),
                    kind=str(tags.get("span.kind", "internal")).upper(),
                    start_ns=start_ns,
                    end_ns=start_ns + int(span.get("duration", 0)) * 1000,
                    status=status,
                    attributes={k: v for k, v in tags.items() if k not in _JAEGER_FIELD_TAGS},
                )
            )
    return spans


def _get_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def load_jaeger(base_url: str, saga_or_trace_id: str, timeout: float = 10.0) -> list[SpanRecord]:
    """A trace by id (``/api/traces/{id}``), or a saga's traces by ``saga.id`` tag search."""
    base = base_url.rstrip("/")
    if _is_trace_id(saga_or_trace_id):
        try:
            return spans_from_jaeger(_get_json(f"{base}/api/traces/{saga_or_trace_id}", timeout))
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return []
            raise
    services: list[str] = _get_json(f"{base}/api/services", timeout).get("data") or []
    now_us = int(time.time() * 1_000_000)
    spans: dict[tuple[str, str], SpanRecord] = {}
    # The coordinator's saga span carries saga.id; in choreography every event span does.
    for service in sorted(services, key=lambda s: (s != "coordinator", s)):
        query = urllib.parse.urlencode(
            {
                "service": service,
                "tags": json.dumps({"saga.id": saga_or_trace_id}),
                "start": now_us - 7 * 24 * 3600 * 1_000_000,
                "end": now_us,
                "limit": 20,
            }
        )
        for span in spans_from_jaeger(_get_json(f"{base}/api/traces?{query}", timeout)):
            spans[(span.trace_id, span.span_id)] = span
        if spans:
            break  # a search answers with whole traces: one service that knows the saga is enough
    return list(spans.values())


# --- the waterfall -----------------------------------------------------------------


def in_tree_order(spans: Iterable[SpanRecord]) -> Iterator[tuple[int, SpanRecord]]:
    """(depth, span), parents first; roots and siblings by start time, then span id.

    A span whose parent is not among ``spans`` is a root; every span appears once.
    """
    unique = {s.span_id: s for s in spans}
    children: dict[str | None, list[SpanRecord]] = defaultdict(list)
    for span in unique.values():
        parent = span.parent_id if span.parent_id in unique else None
        children[parent].append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: (s.start_ns, s.span_id))
    seen: set[str] = set()
    stack: list[tuple[int, SpanRecord]] = [(0, s) for s in reversed(children[None])]
    while stack:
        depth, span = stack.pop()
        if span.span_id in seen:
            continue
        seen.add(span.span_id)
        yield depth, span
        stack.extend((depth + 1, c) for c in reversed(children.get(span.span_id, [])))
    # Spans caught in a parent cycle (corrupt input) still get a line, at the end.
    for span in sorted(unique.values(), key=lambda s: (s.start_ns, s.span_id)):
        if span.span_id not in seen:
            yield 0, span


def _ms(ns: int) -> str:
    return f"{ns / 1_000_000:.1f} ms"


def _bar(span: SpanRecord, t0: int, total: int, width: int) -> str:
    first = (span.start_ns - t0) * width // total
    last = math.ceil((span.end_ns - t0) * width / total)
    first = min(max(first, 0), width - 1)
    last = min(max(last, first + 1), width)
    return _GAP * first + _BAR * (last - first) + _GAP * (width - last)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _indented(depth: int, name: str) -> str:
    """A span's name indented by its depth; a deep one (a long choreographed chain) gives
    up indentation before it gives up letters of its name."""
    indent = "  " * depth
    if len(indent) + len(name) > _MAX_NAME:
        indent = indent[: max(_MAX_NAME - len(name), 0)]
    return _clip(indent + name, _MAX_NAME)


def render_trace(spans: Sequence[SpanRecord], width: int = 40) -> list[str]:
    """The waterfall of one trace's spans, as lines of text."""
    rows = list(in_tree_order(spans))
    t0 = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - t0, 1)
    services = sorted({s.service for s in spans if s.service})
    header = (
        f"trace {spans[0].trace_id}  {len(spans)} spans  {_ms(total)}  "
        f"services: {', '.join(services)}"
    )
    names = [_indented(depth, span.label) for depth, span in rows]
    starts = [f"+{_ms(span.start_ns - t0)}" for _, span in rows]
    durations = [_ms(span.end_ns - span.start_ns) for _, span in rows]
    widths = [
        max(len("SERVICE"), *(len(s.service) for _, s in rows)),
        max(len("SPAN"), *(len(n) for n in names)),
        max(len("START"), *(len(s) for s in starts)),
        max(len("DURATION"), *(len(d) for d in durations)),
    ]
    columns = ["SERVICE", "SPAN", "START", "DURATION"]
    title = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = [header, "", f"{title}  {'TIMELINE'.ljust(width + 2)}  STATUS"]
    for (_, span), name, start, duration in zip(rows, names, starts, durations, strict=True):
        cells = [span.service.ljust(widths[0]), name.ljust(widths[1])]
        cells += [start.rjust(widths[2]), duration.rjust(widths[3])]
        bar = _bar(span, t0, total, width)
        lines.append(f"{'  '.join(cells)}  |{bar}|  {span.status_label}")
    return lines


def render(spans: Iterable[SpanRecord], width: int = 40, jaeger_url: str | None = None) -> str:
    """Every trace among ``spans`` (earliest first), each with its Jaeger link when known."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    blocks = []
    for trace_id, members in sorted(
        by_trace.items(), key=lambda item: (min(s.start_ns for s in item[1]), item[0])
    ):
        lines = render_trace(members, width)
        if jaeger_url:
            lines.append(f"Jaeger: {jaeger_url.rstrip('/')}/trace/{trace_id}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def trace(
    saga_id: Annotated[str, typer.Argument(help="The saga's id (or a 32-hex trace id).")],
    data: Annotated[
        Path,
        typer.Option(
            envvar="SAGAWIRE_DATA_DIR", help="Data directory holding the local trace files."
        ),
    ] = Path(".sagawire"),
    jaeger: Annotated[
        str | None,
        typer.Option(
            envvar="SAGAWIRE_JAEGER_URL",
            help="Jaeger's base URL, e.g. http://localhost:16686: read the trace from Jaeger.",
        ),
    ] = None,
    width: Annotated[int, typer.Option(min=10, max=400, help="Timeline width.")] = 40,
) -> None:
    """Draw a saga's trace as a waterfall: service, span, start, duration, status."""
    if jaeger:
        try:
            spans = load_jaeger(jaeger, saga_id)
        except (OSError, ValueError) as error:
            typer.echo(f"cannot read traces from Jaeger at {jaeger}: {error}", err=True)
            raise typer.Exit(2) from None
        where = f"Jaeger at {jaeger}"
    else:
        spans = load_local(data, saga_id)
        where = f"{os.fspath(data)}/*.jsonl"
    if not spans:
        typer.echo(f"no trace found for {saga_id} in {where}", err=True)
        raise typer.Exit(1)
    typer.echo(render(spans, width, jaeger))
