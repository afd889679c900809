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

import base64
import json
import math
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from cli.client import ExitCode, coordinator_address, identity
from cli.output import Output, OutputOption, print_json
from cli.tokens import cli_token
from common.tokens import with_token
from common.trace_file import read_span_lines
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import coordinator_pb2_grpc, participant_pb2

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
        """ "ok", or what went wrong: "error", then a step attempt's saga outcome, or
        another call's gRPC code. (A coordinator's attempt is also its call's span: its
        outcome says what the code would, in the words a service's reaction uses.)"""
        words = ["error"] if self.status == "ERROR" else []
        code = self.attributes.get("rpc.grpc.status_code")
        outcome = self.attributes.get("saga.outcome")
        if outcome is not None:
            if outcome != "ok":
                words.append(str(outcome))
        elif isinstance(code, int) and code != 0:
            words.append(_GRPC_CODES.get(code, str(code)))
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


def spans_from_otlp(document: Mapping[str, Any]) -> list[SpanRecord]:
    """The spans of an OTLP/JSON document, as Jaeger's API v3 answers (``{"result":
    {"resourceSpans": [...]}}``): ids in hex (base64 also read), times in nanoseconds."""
    spans: list[SpanRecord] = []
    data = document.get("result", document)
    for resource_spans in data.get("resourceSpans") or []:
        resource = _otlp_attributes((resource_spans.get("resource") or {}).get("attributes"))
        service = str(resource.get("service.name", ""))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                parent = span.get("parentSpanId") or ""
                spans.append(
                    SpanRecord(
                        trace_id=_hex_id(span["traceId"], 32),
                        span_id=_hex_id(span["spanId"], 16),
                        parent_id=_hex_id(parent, 16) if parent else None,
                        name=str(span.get("name", "")),
                        service=service,
                        kind=_enum_name(span.get("kind"), "SPAN_KIND_", _KINDS, "INTERNAL"),
                        start_ns=int(span.get("startTimeUnixNano") or 0),
                        end_ns=int(span.get("endTimeUnixNano") or 0),
                        status=_enum_name(
                            (span.get("status") or {}).get("code"),
                            "STATUS_CODE_",
                            _STATUSES,
                            "UNSET",
                        ),
                        attributes=_otlp_attributes(span.get("attributes")),
                    )
                )
    return spans


_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
_STATUSES = ("UNSET", "OK", "ERROR")


def _enum_name(value: Any, prefix: str, names: Sequence[str], default: str) -> str:
    """An OTLP enum given by name (``SPAN_KIND_SERVER``) or number (2) as ``SERVER``."""
    if isinstance(value, int) and 0 <= value < len(names):
        name = names[value]
    elif isinstance(value, str) and value:
        name = value.removeprefix(prefix)
    else:
        return default
    return default if name == "UNSPECIFIED" else name


def _hex_id(value: str, length: int) -> str:
    text = str(value)
    if len(text) == length and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    return base64.b64decode(text).hex().zfill(length)


def _otlp_value(value: Mapping[str, Any]) -> Any:
    if "arrayValue" in value:
        return [_otlp_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "intValue" in value:
        return int(value["intValue"])
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    return None


def _otlp_attributes(attributes: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _otlp_value(a.get("value") or {}) for a in attributes or []}


def _get_json(url: str, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


class _NoApiV3(Exception):
    """This Jaeger does not serve the API v3 (a Jaeger v1 query service)."""


def _get_v3(url: str, timeout: float) -> list[SpanRecord]:
    """Spans from an API v3 call; none for its "not found"; _NoApiV3 when there is no v3."""
    try:
        return spans_from_otlp(_get_json(url, timeout))
    except urllib.error.HTTPError as error:
        if error.code != 404:
            raise
        try:
            answer = json.loads(error.read() or b"null")
        except ValueError:
            answer = None
        if isinstance(answer, dict) and "error" in answer:
            return []  # the v3 API's own answer: no such trace
        raise _NoApiV3 from None


def load_jaeger(base_url: str, saga_or_trace_id: str, timeout: float = 10.0) -> list[SpanRecord]:
    """A trace by id, or a saga's traces by ``saga.id`` attribute search, from Jaeger's
    query API: the stable API v3 (``/api/v3/traces``, OTLP JSON), or the v1 JSON API
    (``/api/traces``) of a Jaeger that has no v3."""
    base = base_url.rstrip("/")
    try:
        return _load_v3(base, saga_or_trace_id, timeout)
    except _NoApiV3:
        return _load_v1(base, saga_or_trace_id, timeout)


def _load_v3(base: str, saga_or_trace_id: str, timeout: float) -> list[SpanRecord]:
    if _is_trace_id(saga_or_trace_id):
        return _get_v3(f"{base}/api/v3/traces/{saga_or_trace_id.lower()}", timeout)
    try:
        services = _get_json(f"{base}/api/v3/services", timeout).get("services") or []
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise _NoApiV3 from None
        raise
    now = datetime.now(UTC)
    window = {
        "query.start_time_min": (now - timedelta(days=7)).isoformat().replace("+00:00", "Z"),
        "query.start_time_max": (now + timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
        "query.attributes": json.dumps({"saga.id": saga_or_trace_id}),
        "query.search_depth": 20,
    }
    spans: dict[tuple[str, str], SpanRecord] = {}
    # The coordinator's saga span carries saga.id; in choreography every event span does.
    for service in sorted(services, key=lambda s: (s != "coordinator", s)):
        query = urllib.parse.urlencode({"query.service_name": service, **window})
        for span in _get_v3(f"{base}/api/v3/traces?{query}", timeout):
            spans[(span.trace_id, span.span_id)] = span
        if spans:
            break  # a search answers with whole traces: one service that knows the saga is enough
    return list(spans.values())


def _load_v1(base: str, saga_or_trace_id: str, timeout: float) -> list[SpanRecord]:
    """The same through Jaeger's older JSON API (``/api/traces``)."""
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
            break
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


def render_trace(
    spans: Sequence[SpanRecord], width: int = 40, max_width: int | None = None
) -> list[str]:
    """The waterfall of one trace's spans, as lines of text; with ``max_width`` (a
    terminal's), the timeline narrows to 10 and then span names end with an ellipsis
    before a line would be wider."""
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
    if max_width is not None:
        status = max(len("STATUS"), *(len(s.status_label) for _, s in rows))
        excess = sum(widths) + 12 + width + status - max_width
        narrower = max(min(10, width), width - max(excess, 0))
        excess -= width - narrower
        width = narrower
        if excess > 0:
            widths[1] = max(len("SPAN"), 16, widths[1] - excess)
            names = [_clip(name, widths[1]) for name in names]
    columns = ["SERVICE", "SPAN", "START", "DURATION"]
    title = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    lines = [header, "", f"{title}  {'TIMELINE'.ljust(width + 2)}  STATUS"]
    for (_, span), name, start, duration in zip(rows, names, starts, durations, strict=True):
        cells = [span.service.ljust(widths[0]), name.ljust(widths[1])]
        cells += [start.rjust(widths[2]), duration.rjust(widths[3])]
        bar = _bar(span, t0, total, width)
        lines.append(f"{'  '.join(cells)}  |{bar}|  {span.status_label}")
    return lines


def render(
    spans: Iterable[SpanRecord],
    width: int = 40,
    jaeger_url: str | None = None,
    max_width: int | None = None,
) -> str:
    """Every trace among ``spans`` (earliest first), each with its Jaeger link when known."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    blocks = []
    for trace_id, members in sorted(
        by_trace.items(), key=lambda item: (min(s.start_ns for s in item[1]), item[0])
    ):
        lines = render_trace(members, width, max_width)
        if jaeger_url:
            lines.append(f"Jaeger: {jaeger_url.rstrip('/')}/trace/{trace_id}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# --- is the trace whole? -----------------------------------------------------------

# A call that ended so may never have reached its server: no server span is owed.
_MAYBE_UNSENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"})
_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class SagaFacts:
    """What the coordinator says of a saga, to tell when its trace is whole."""

    settled: bool
    # Labels of the spans of the coordinator's own attempts ("step charge_payment #2").
    attempts: frozenset[str]


def missing_spans(spans: Sequence[SpanRecord], facts: SagaFacts | None = None) -> list[str]:
    """What a saga's trace still lacks, in words; empty when it is whole.

    Processes export their spans in batches, each on its own clock, so a trace read
    right after its saga ended may lack some: a saga span, a span's parent, the server
    span of a call that reached its server, or (from the coordinator's log) an attempt.
    """
    present = {s.span_id for s in spans}
    missing: list[str] = []
    if any("saga.id" in s.attributes for s in spans) and not any(
        s.name.startswith("saga ") and "saga.id" in s.attributes for s in spans
    ):
        missing.append("the coordinator's saga span")
    for service, label in sorted(
        {(s.service, s.label) for s in spans if s.parent_id and s.parent_id not in present}
    ):
        missing.append(f"the parent of {service} {label}")
    servers = {s.parent_id for s in spans if s.kind == "SERVER"}
    for span in spans:
        code = span.attributes.get("rpc.grpc.status_code")
        answered = isinstance(code, int) and _GRPC_CODES.get(code) not in _MAYBE_UNSENT
        if span.kind == "CLIENT" and answered and span.span_id not in servers:
            missing.append(f"the server span of {span.service}'s call {span.name}")
    if facts is not None:
        if not facts.settled:
            missing.append("the rest of the saga (it is still running)")
        labels = {s.label for s in spans if s.service == "coordinator"}
        missing += [f"coordinator {label}" for label in sorted(facts.attempts - labels)]
    return missing


def saga_facts(saga_id: str) -> SagaFacts | bool | None:
    """What the coordinator (``--address``) says of the saga: its facts; False when it
    answers that there is no such saga; None when it cannot say (not reachable, another
    stack, no credentials)."""
    try:
        with identity().sync_channel(coordinator_address()) as channel:
            api = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), cli_token())
            saga = api.GetSaga(pb.GetSagaRequest(saga_id=saga_id), timeout=3)
    except grpc.RpcError as error:
        return False if error.code() == grpc.StatusCode.NOT_FOUND else None
    except (SystemExit, ValueError):  # BadSetting: no credentials or address to ask with
        return None
    settled = saga.status in (
        pb.SAGA_STATUS_COMPLETED,
        pb.SAGA_STATUS_COMPENSATED,
        pb.SAGA_STATUS_NEEDS_ATTENTION,
    )
    attempts = frozenset(
        f"{'step' if a.phase == 'execute' else 'compensate'} {step.name} #{a.number}"
        for step in saga.steps
        for a in step.attempts
        if a.outcome in ("ok", "rejected", "transient", "error", "aborted")
    )
    orchestrated = saga.mode == participant_pb2.SAGA_MODE_ORCHESTRATION
    return SagaFacts(settled, attempts if orchestrated else frozenset())


def _summary(missing: Sequence[str], shown: int = 3) -> str:
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return ", ".join(missing[:shown]) + more


def _terminal_width() -> int | None:
    """The width to fit: the terminal's, or COLUMNS; None into a pipe (lines stay whole)."""
    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


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
    wait: Annotated[
        float,
        typer.Option(
            min=0, max=600, help="Seconds to wait for spans still being written (0: none)."
        ),
    ] = 15.0,
    output: OutputOption = Output.table,
) -> None:
    """Draw a saga's trace as a waterfall: service, span, start, duration, status.

    Processes write their spans in batches, a few seconds apart: it waits (at most
    --wait) until the saga's trace is whole, and otherwise says what is missing.
    """
    where = f"Jaeger at {jaeger}" if jaeger else f"{os.fspath(data)}/*.jsonl"
    facts = None if _is_trace_id(saga_id) else saga_facts(saga_id)
    deadline = time.monotonic() + wait
    waited = False
    while True:
        try:
            spans = load_jaeger(jaeger, saga_id) if jaeger else load_local(data, saga_id)
        except (OSError, ValueError) as error:
            typer.echo(f"error: cannot read traces from {where}: {error}", err=True)
            raise typer.Exit(ExitCode.UNREACHABLE) from None
        missing = missing_spans(spans, facts if isinstance(facts, SagaFacts) else None)
        if spans and not missing:
            break
        if time.monotonic() >= deadline or (facts is False and not spans):
            break  # out of time; or a saga the coordinator does not know and no span of it
        if not waited:
            waited = True
            what = (
                f"{len(spans)} spans so far, missing {_summary(missing)}" if spans else "none yet"
            )
            typer.echo(f"waiting up to {wait:g} s for the spans of {saga_id} ({what})", err=True)
        time.sleep(_POLL_SECONDS)
        if isinstance(facts, SagaFacts) and not facts.settled:
            facts = saga_facts(saga_id)
    if not spans:
        after = f" (waited {wait:g} s)" if waited else ""
        typer.echo(f"no trace found for {saga_id} in {where}{after}", err=True)
        raise typer.Exit(ExitCode.NOT_FOUND)
    if missing:
        typer.echo(
            f"the trace may be incomplete after {wait:g} s: missing {_summary(missing, 5)}",
            err=True,
        )
    if output is Output.json:
        for span in spans:
            print_json({**asdict(span), "attributes": dict(span.attributes)})
        return
    typer.echo(render(spans, width, jaeger, _terminal_width()))
