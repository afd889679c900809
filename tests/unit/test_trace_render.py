"""``sagawire trace``: a known trace drawn as a waterfall, from a local file and from Jaeger."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from cli.trace import SpanRecord, in_tree_order, span_from_file

GOLDEN = Path(__file__).parent / "golden" / "trace_place_order.txt"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SAGA_ID = "saga-7f3e"
T0 = 1_700_000_000_000_000_000
MS = 1_000_000

# (span id, parent, service, kind, name, start ms, end ms, status, attributes)
_SPANS: list[tuple[str, str | None, str, str, str, float, float, str, dict[str, Any]]] = [
    (
        "a000000000000001",
        None,
        "coordinator",
        "SERVER",
        "/sagawire.v1.Coordinator/PlaceOrder",
        0,
        30,
        "UNSET",
        {"rpc.grpc.status_code": 0},
    ),
    (
        "a000000000000002",
        "a000000000000001",
        "coordinator",
        "INTERNAL",
        "saga place_order",
        1,
        29,
        "ERROR",
        {"saga.id": SAGA_ID, "saga.type": "place_order", "saga.mode": "orchestration"},
    ),
    (
        "a000000000000003",
        "a000000000000002",
        "coordinator",
        "INTERNAL",
        "step reserve_stock",
        2,
        10,
        "UNSET",
        {"saga.id": SAGA_ID, "saga.step": "reserve_stock", "saga.attempt": 1, "saga.outcome": "ok"},
    ),
    (
        "a000000000000004",
        "a000000000000003",
        "coordinator",
        "CLIENT",
        "/sagawire.v1.Participant/Execute",
        2.5,
        9.5,
        "UNSET",
        {"rpc.grpc.status_code": 0},
    ),
    (
        "b000000000000001",
        "a000000000000004",
        "inventory",
        "SERVER",
        "/sagawire.v1.Participant/Execute",
        3,
        9,
        "UNSET",
        {"rpc.grpc.status_code": 0},
    ),
    # Two siblings starting at the same instant: ordered by span id.
    (
        "a000000000000006",
        "a000000000000002",
        "coordinator",
        "INTERNAL",
        "step charge_payment",
        11,
        20,
        "ERROR",
        {
            "saga.id": SAGA_ID,
            "saga.step": "charge_payment",
            "saga.attempt": 1,
            "saga.outcome": "rejected",
            "saga.error_reason": "INSUFFICIENT_FUNDS",
        },
    ),
    (
        "a000000000000005",
        "a000000000000002",
        "coordinator",
        "INTERNAL",
        "step audit",
        11,
        11.2,
        "UNSET",
        {"saga.id": SAGA_ID, "saga.step": "audit", "saga.outcome": "ok"},
    ),
    (
        "a000000000000007",
        "a000000000000006",
        "coordinator",
        "CLIENT",
        "/sagawire.v1.Participant/Execute",
        11.5,
        19.5,
        "ERROR",
        {"rpc.grpc.status_code": 9},
    ),
    (
        "c000000000000001",
        "a000000000000007",
        "payment",
        "SERVER",
        "/sagawire.v1.Participant/Execute",
        12,
        19,
        "UNSET",
        {"rpc.grpc.status_code": 9},
    ),
    (
        "a000000000000008",
        "a000000000000002",
        "coordinator",
        "INTERNAL",
        "compensate reserve_stock",
        21,
        28,
        "UNSET",
        {"saga.id": SAGA_ID, "saga.outcome": "ok"},
    ),
    (
        "a000000000000009",
        "a000000000000008",
        "coordinator",
        "CLIENT",
        "/sagawire.v1.Participant/Compensate",
        21.5,
        27.5,
        "UNSET",
        {"rpc.grpc.status_code": 0},
    ),
    (
        "b000000000000002",
        "a000000000000009",
        "inventory",
        "SERVER",
        "/sagawire.v1.Participant/Compensate",
        22,
        27,
        "UNSET",
        {"rpc.grpc.status_code": 0},
    ),
]


def _file_records() -> list[dict[str, Any]]:
    return [
        {
            "trace_id": TRACE_ID,
            "span_id": span_id,
            "parent_span_id": parent,
            "name": name,
            "kind": kind,
            "service": service,
            "start_ns": T0 + int(start * MS),
            "end_ns": T0 + int(end * MS),
            "status": status,
            "status_message": "",
            "attributes": attributes,
            "events": [],
            "links": [],
        }
        for span_id, parent, service, kind, name, start, end, status, attributes in _SPANS
    ]


def _jaeger_document() -> dict[str, Any]:
    """The same trace as Jaeger's query API returns it (times in microseconds)."""
    services = sorted({s[2] for s in _SPANS})
    process_ids = {name: f"p{i + 1}" for i, name in enumerate(services)}
    spans = []
    for span_id, parent, service, kind, name, start, end, status, attributes in _SPANS:
        tags = [{"key": k, "type": "string", "value": v} for k, v in attributes.items()]
        tags.append({"key": "span.kind", "type": "string", "value": kind.lower()})
        if status == "ERROR":
            tags += [
                {"key": "otel.status_code", "type": "string", "value": "ERROR"},
                {"key": "error", "type": "bool", "value": True},
            ]
        spans.append(
            {
                "traceID": TRACE_ID,
                "spanID": span_id,
                "operationName": name,
                "references": [{"refType": "CHILD_OF", "traceID": TRACE_ID, "spanID": parent}]
                if parent
                else [],
                "startTime": (T0 + int(start * MS)) // 1000,
                "duration": int((end - start) * 1000),
                "tags": tags,
                "logs": [],
                "processID": process_ids[service],
                "warnings": None,
            }
        )
    processes = {pid: {"serviceName": name, "tags": []} for name, pid in process_ids.items()}
    return {
        "data": [{"traceID": TRACE_ID, "spans": spans, "processes": processes, "warnings": None}],
        "total": 0,
        "limit": 0,
        "offset": 0,
        "errors": None,
    }


def _write_trace_files(data_dir: Path) -> None:
    records = _file_records()
    noise = {
        **records[0],
        "trace_id": OTHER_TRACE_ID,
        "span_id": "d000000000000001",
        "attributes": {"saga.id": "another-saga"},
    }
    # Two processes' files; the last line of one was torn by a crash.
    (data_dir / "traces.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [*records[:6], noise]) + '{"trace_id": "4bf9'
    )
    sub = data_dir / "payment"
    sub.mkdir()
    (sub / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[6:]))


def test_renders_a_saga_from_the_local_trace_files(tmp_path: Path) -> None:
    _write_trace_files(tmp_path)
    result = CliRunner().invoke(app, ["trace", SAGA_ID, "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output == GOLDEN.read_text(encoding="utf-8")


def test_a_trace_id_finds_the_same_trace(tmp_path: Path) -> None:
    _write_trace_files(tmp_path)
    result = CliRunner().invoke(app, ["trace", TRACE_ID.upper(), "--data", str(tmp_path)])
    assert result.output == GOLDEN.read_text(encoding="utf-8")


def test_an_unknown_saga_is_not_found(tmp_path: Path) -> None:
    _write_trace_files(tmp_path)
    result = CliRunner().invoke(app, ["trace", "nope", "--data", str(tmp_path), "--wait", "0"])
    assert result.exit_code == 5
    assert "no trace found for nope" in result.output


def test_it_waits_for_spans_still_being_written(tmp_path: Path) -> None:
    """The payment service's batch of spans lands a moment after the coordinator's."""
    records = _file_records()
    early = [r for r in records if r["service"] != "payment"]
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in early))

    def late_batch() -> None:
        time.sleep(1.0)
        with (tmp_path / "traces.jsonl").open("a") as out:
            out.write("".join(json.dumps(r) + "\n" for r in records if r not in early))

    writer = threading.Thread(target=late_batch)
    writer.start()
    try:
        result = CliRunner().invoke(app, ["trace", SAGA_ID, "--data", str(tmp_path)])
    finally:
        writer.join()
    assert result.exit_code == 0, result.output
    assert result.stdout == GOLDEN.read_text(encoding="utf-8")
    assert result.stderr.splitlines() == [
        f"waiting up to 15 s for the spans of {SAGA_ID} (11 spans so far, missing the server"
        " span of coordinator's call /sagawire.v1.Participant/Execute)"
    ]


def test_an_incomplete_trace_is_shown_with_what_it_lacks(tmp_path: Path) -> None:
    records = [r for r in _file_records() if r["span_id"] != "b000000000000001"]
    (tmp_path / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(app, ["trace", SAGA_ID, "--data", str(tmp_path), "--wait", "1"])
    assert result.exit_code == 0, result.output
    assert "saga place_order" in result.stdout
    assert result.stderr.splitlines()[-1] == (
        "the trace may be incomplete after 1 s: missing the server span of coordinator's call"
        " /sagawire.v1.Participant/Execute"
    )


def test_the_waterfall_fits_the_terminal(tmp_path: Path) -> None:
    _write_trace_files(tmp_path)
    result = CliRunner().invoke(
        app, ["trace", SAGA_ID, "--data", str(tmp_path)], env={"COLUMNS": "100"}
    )
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines[1:]) <= 100, result.stdout
    assert len(lines) == len(GOLDEN.read_text(encoding="utf-8").splitlines())
    assert "step charge_payment #1" in result.stdout


class _FakeJaeger(BaseHTTPRequestHandler):
    """Jaeger's query API, as far as ``sagawire trace`` uses it."""

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        body: Any
        if url.path == f"/api/traces/{TRACE_ID}":
            body = _jaeger_document()
        elif url.path == "/api/services":
            body = {"data": ["payment", "coordinator", "inventory"], "total": 3}
        elif url.path == "/api/traces" and query.get("service") == ["coordinator"]:
            wanted = json.loads(query["tags"][0]).get("saga.id")
            body = _jaeger_document() if wanted == SAGA_ID else {"data": []}
        elif url.path == "/api/traces":
            body = {"data": []}
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def jaeger_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJaeger)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("lookup", [TRACE_ID, SAGA_ID])
def test_renders_the_same_trace_from_jaeger(jaeger_url: str, lookup: str) -> None:
    result = CliRunner().invoke(app, ["trace", lookup, "--jaeger", jaeger_url + "/"])
    assert result.exit_code == 0, result.output
    link = f"Jaeger: {jaeger_url}/trace/{TRACE_ID}\n"
    assert result.output == GOLDEN.read_text(encoding="utf-8") + link


def test_an_unreachable_jaeger_is_reported() -> None:
    result = CliRunner().invoke(app, ["trace", SAGA_ID, "--jaeger", "http://127.0.0.1:9"])
    assert result.exit_code == 6
    assert "cannot read traces from Jaeger" in result.output


def _otlp_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64: a string in protobuf's JSON
    return {"stringValue": str(value)}


def _otlp_document() -> dict[str, Any]:
    """The same trace as Jaeger's API v3 returns it: OTLP JSON, one resource per service."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for span_id, parent, service, kind, name, start, end, status, attributes in _SPANS:
        by_service.setdefault(service, []).append(
            {
                "traceId": TRACE_ID,
                "spanId": span_id,
                **({"parentSpanId": parent} if parent else {}),
                "name": name,
                "kind": f"SPAN_KIND_{kind}",
                "startTimeUnixNano": str(T0 + int(start * MS)),
                "endTimeUnixNano": str(T0 + int(end * MS)),
                "status": {"code": "STATUS_CODE_ERROR"} if status == "ERROR" else {},
                "attributes": [{"key": k, "value": _otlp_value(v)} for k, v in attributes.items()],
            }
        )
    return {
        "result": {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": name}}]
                    },
                    "scopeSpans": [{"scope": {"name": "sagawire"}, "spans": spans}],
                }
                for name, spans in by_service.items()
            ]
        }
    }


class _FakeJaegerV2(BaseHTTPRequestHandler):
    """Jaeger v2's API v3, as far as ``sagawire trace`` uses it (no v1 API at all)."""

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        status, body = 200, None
        if url.path == f"/api/v3/traces/{TRACE_ID}":
            body = _otlp_document()
        elif url.path.startswith("/api/v3/traces/"):
            status, body = 404, {"error": {"httpCode": 404, "message": "trace not found"}}
        elif url.path == "/api/v3/services":
            body = {"services": ["payment", "coordinator", "inventory"]}
        elif url.path == "/api/v3/traces":
            wanted = json.loads(query["query.attributes"][0]).get("saga.id")
            assert query["query.start_time_min"] and query["query.start_time_max"]
            found = query["query.service_name"] == ["coordinator"] and wanted == SAGA_ID
            status, body = (200, _otlp_document()) if found else (404, {"error": {}})
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("lookup", [TRACE_ID, SAGA_ID])
def test_jaeger_v2_is_read_through_its_api_v3(lookup: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeJaegerV2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = CliRunner().invoke(app, ["trace", lookup, "--jaeger", url])
        missing = CliRunner().invoke(app, ["trace", OTHER_TRACE_ID, "--jaeger", url, "--wait", "0"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert result.exit_code == 0, result.output
    assert result.stdout == GOLDEN.read_text(encoding="utf-8") + f"Jaeger: {url}/trace/{TRACE_ID}\n"
    assert missing.exit_code == 5


def _span(span_id: str, parent: str | None, start: int) -> SpanRecord:
    record = {
        "trace_id": TRACE_ID,
        "span_id": span_id,
        "parent_span_id": parent,
        "start_ns": start,
        "end_ns": start + 1,
    }
    return span_from_file(record)


def test_tree_order_survives_orphans_duplicates_and_cycles() -> None:
    spans = [
        _span("0003", "0002", 3),  # a cycle: 0002 <-> 0003
        _span("0002", "0003", 2),
        _span("0005", "ffff", 5),  # parent never exported: a root
        _span("0001", None, 1),
        _span("0001", None, 1),  # the same span twice (two files)
        _span("0004", "0001", 4),
    ]
    order = [(depth, span.span_id) for depth, span in in_tree_order(spans)]
    assert order == [(0, "0001"), (1, "0004"), (0, "0005"), (0, "0002"), (0, "0003")]
