"""Traces, metrics and logs of real gRPC calls: in memory, over real OTLP, and in the local file.

Every test builds its own providers (``create_telemetry``); none sets the
OpenTelemetry globals, so nothing leaks from one test to the next.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from typer.testing import CliRunner

from cli.main import app as cli_app
from common import telemetry
from common.certs import COORDINATOR
from common.logs import log_handler
from common.participant import StepContext
from common.server import RunningServer, start_server
from common.store import Connection
from common.telemetry import (
    Telemetry,
    activated,
    consumer_span,
    create_telemetry,
    inject_headers,
    service_resource,
    setup_telemetry,
    span_exporters_from_env,
)
from common.trace_file import JsonLinesSpanExporter
from contract.messages import pack
from protos.sagawire.v1 import (
    common_pb2,
    events_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    order_saga_pb2,
    participant_pb2,
    participant_pb2_grpc,
    payment_pb2,
    payment_pb2_grpc,
)
from services.launcher import spec_of
from services.runtime import DomainService
from tests.integration.otlp_receiver import OtlpReceiver, attribute
from tests.support import open_channel, service_settings, start_service_process, wait_until
from tests.telemetry_support import sampling_no_new_trace

EXECUTE = "/sagawire.v1.Participant/Execute"


def step_request(sku: str, quantity: int) -> participant_pb2.StepRequest:
    data = order_saga_pb2.OrderSagaData(
        order_id=str(uuid.uuid4()),
        customer_id="alice",
        destination="Berlin",
        items=[common_pb2.LineItem(sku=sku, quantity=quantity)],
    )
    return participant_pb2.StepRequest(
        saga_id=str(uuid.uuid4()), step="reserve_stock", action="reserve", payload=pack(data)
    )


def service_of(span: ReadableSpan) -> object:
    return span.resource.attributes.get("service.name")


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def trace_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def grpc_code(span: ReadableSpan) -> object:
    return (span.attributes or {}).get("rpc.grpc.status_code")


def of_kind(spans: Sequence[ReadableSpan], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_time or 0)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@dataclass
class TracedInventory:
    """The real inventory service in-process, instrumented, and an instrumented client."""

    app: DomainService
    running: RunningServer
    client: Telemetry
    channel: grpc.aio.Channel

    @property
    def participant(self) -> participant_pb2_grpc.ParticipantStub:
        return participant_pb2_grpc.ParticipantStub(self.channel)


@pytest.fixture
async def inventory(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> AsyncIterator[TracedInventory]:
    server_telemetry = create_telemetry("inventory", [exporter], batch=False)
    client = create_telemetry("test-client", [exporter], batch=False)
    settings = service_settings(tmp_path)
    app = DomainService(spec_of("inventory"), settings)
    running = await start_server(app, settings, telemetry=server_telemetry)
    # The test calls Execute: it presents the coordinator's certificate.
    channel = open_channel(running.address, COORDINATOR, interceptors=client.client_interceptors())
    try:
        yield TracedInventory(app, running, client, channel)
    finally:
        await channel.close()
        await running.stop()  # also shuts the server's telemetry down
        client.shutdown()


async def finished(exporter: InMemorySpanExporter, count: int) -> tuple[ReadableSpan, ...]:
    return await wait_until(
        lambda: len(exporter.get_finished_spans()) >= count and exporter.get_finished_spans(),
        message=f"{count} finished spans",
    )


async def test_calls_get_client_and_server_spans_with_their_status_codes(
    inventory: TracedInventory, exporter: InMemorySpanExporter
) -> None:
    health = health_pb2_grpc.HealthStub(inventory.channel)
    with inventory.client.tracer.start_as_current_span("test") as root:
        await inventory.participant.Execute(step_request("SKU-MUG", 1))
        with pytest.raises(grpc.aio.AioRpcError) as rejected:
            await inventory.participant.Execute(step_request("SKU-RARE", 2))
        await health.Check(health_pb2.HealthCheckRequest())
    assert rejected.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    spans = await finished(exporter, 5)
    assert not [s for s in spans if "grpc.health" in s.name]  # health checks are not traced
    servers, clients = of_kind(spans, SpanKind.SERVER), of_kind(spans, SpanKind.CLIENT)
    assert [s.name for s in servers] == [EXECUTE, EXECUTE]
    assert [s.name for s in clients] == [EXECUTE, EXECUTE]
    assert {service_of(s) for s in servers} == {"inventory"}
    assert {service_of(s) for s in clients} == {"test-client"}
    assert [grpc_code(s) for s in servers] == [0, 9]
    assert [grpc_code(s) for s in clients] == [0, 9]
    # Semantic conventions: a FAILED_PRECONDITION is an error for the caller, not the server.
    assert [s.status.status_code for s in clients] == [StatusCode.UNSET, StatusCode.ERROR]
    assert [s.status.status_code for s in servers] == [StatusCode.UNSET, StatusCode.UNSET]
    root_context = root.get_span_context()
    for client, server in zip(clients, servers, strict=True):
        assert trace_id(client) == trace_id(server) == root_context.trace_id
        assert parent_id(client) == root_context.span_id
        assert parent_id(server) == span_id(client)
        assert server.parent is not None and server.parent.is_remote


async def test_a_bug_is_an_error_span_and_its_log_line_carries_the_trace(
    inventory: TracedInventory, exporter: InMemorySpanExporter
) -> None:
    def broken(conn: Connection, ctx: StepContext, payload: Message) -> Message:
        raise RuntimeError("a bug")

    actions = inventory.app.runner.by_action
    actions["reserve"] = dataclasses.replace(actions["reserve"], execute=broken)
    lines = io.StringIO()
    handler = log_handler("inventory", lines)
    logger = logging.getLogger("common.grpc_errors")
    logger.addHandler(handler)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await inventory.participant.Execute(step_request("SKU-MUG", 1))
    finally:
        logger.removeHandler(handler)
    assert failed.value.code() == grpc.StatusCode.INTERNAL

    spans = await finished(exporter, 2)
    (server,) = of_kind(spans, SpanKind.SERVER)
    assert server.status.status_code == StatusCode.ERROR
    assert grpc_code(server) == 13
    logged = [line for line in lines.getvalue().splitlines() if "unhandled error" in line]
    assert logged, lines.getvalue()
    assert f" trace_id={trace_id(server):032x} span_id={span_id(server):016x} " in logged[0]
    assert " level=ERROR service=inventory logger=common.grpc_errors trace_id=" in logged[0]


def test_log_lines_outside_a_span_have_no_trace_fields() -> None:
    lines = io.StringIO()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
    log_handler("order", lines).handle(record)
    assert lines.getvalue().endswith(" level=INFO service=order logger=x hello\n")


def _traceparent(headers: Mapping[str, str]) -> tuple[str, str]:
    _version, trace, span, _flags = str(headers["traceparent"]).split("-")
    return trace, span


async def test_events_written_by_a_call_carry_its_trace(
    inventory: TracedInventory, exporter: InMemorySpanExporter
) -> None:
    await inventory.participant.Execute(step_request("SKU-MUG", 1))
    events, _ = await inventory.app.outbox.read(1, 10)
    assert [e.type for e in events] == ["sagawire.inventory.reserved"]

    spans = await finished(exporter, 2)
    (server,) = of_kind(spans, SpanKind.SERVER)
    trace, parent = _traceparent(events[0].headers)
    # The event continues the call's trace from the call's own span: writing it to the
    # outbox is not a hop, and makes no span.
    assert (trace, parent) == (f"{trace_id(server):032x}", f"{span_id(server):016x}")
    assert not of_kind(spans, SpanKind.PRODUCER)


def test_an_event_carries_its_publishers_span_and_its_consumer_continues_it(
    exporter: InMemorySpanExporter,
) -> None:
    inventory = create_telemetry("inventory", [exporter], batch=False)
    payment = create_telemetry("payment", [exporter], batch=False)
    with activated(inventory):
        assert telemetry.active() is inventory
        with inventory.tracer.start_as_current_span("Execute") as handler:
            headers = inject_headers({})
    assert telemetry.active() is None
    event = events_pb2.Event(
        id="e-1",
        source="inventory",
        type="sagawire.inventory.reserved",
        subject="saga-1",
        sequence=7,
        headers=headers,
    )
    with activated(payment), consumer_span(event, "charge on reserved"):
        onwards = inject_headers({})

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"Execute", "charge on reserved"}  # one span per hop, no more
    published = spans["Execute"]
    consumed = spans["charge on reserved"]
    assert consumed.kind == SpanKind.CONSUMER
    assert trace_id(consumed) == handler.get_span_context().trace_id
    assert parent_id(consumed) == span_id(published)
    assert [link.context.span_id for link in consumed.links] == [span_id(published)]
    # What the reaction publishes continues from the reaction.
    assert _traceparent(onwards)[1] == f"{span_id(consumed):016x}"
    assert service_of(consumed) == "payment" and service_of(published) == "inventory"
    assert consumed.attributes is not None
    assert consumed.attributes["saga.id"] == "saga-1"
    assert consumed.attributes["messaging.message.id"] == "e-1"
    assert consumed.attributes["sagawire.event.sequence"] == 7


def test_sampling_follows_the_standard_variables_and_the_trace_decided_at_its_start(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OTEL_TRACES_SAMPLER / _ARG, read by the SDK: here, no new trace is sampled, but a
    # process continuing a trace sampled where it started traces its part of it, so a
    # saga is traced whole or not at all.
    payment = sampling_no_new_trace(monkeypatch, "payment", exporter)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    sampled = create_telemetry("coordinator", [exporter], batch=False)
    with activated(payment), payment.tracer.start_as_current_span("new trace") as dropped:
        unsampled = inject_headers({})
    assert not dropped.is_recording()
    with sampled.tracer.start_as_current_span("saga"):
        traced = inject_headers({})
    event = events_pb2.Event(id="e-3", type="t", subject="s", headers=traced)
    with activated(payment), consumer_span(event, "continued") as span:
        assert span.is_recording()
    ignored = events_pb2.Event(id="e-4", type="t", subject="s", headers=unsampled)
    with activated(payment), consumer_span(ignored, "not continued") as span:
        assert not span.is_recording()
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["continued", "saga"]


def test_an_event_without_trace_context_starts_a_new_trace(
    exporter: InMemorySpanExporter,
) -> None:
    with (
        activated(create_telemetry("payment", [exporter], batch=False)),
        consumer_span(events_pb2.Event(id="e-2", type="t", subject="s")) as span,
    ):
        assert span.get_span_context().is_valid
    (consumed,) = exporter.get_finished_spans()
    assert consumed.parent is None and not consumed.links and consumed.name == "process t"


def test_resource_names_the_process_unless_the_environment_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    resource = service_resource("payment").attributes
    assert resource["service.name"] == "payment"
    assert resource["deployment.environment"] == "test"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payment-eu")
    assert service_resource("payment").attributes["service.name"] == "payment-eu"


def test_exporters_follow_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    (local,) = span_exporters_from_env(tmp_path)
    assert isinstance(local, JsonLinesSpanExporter) and local.path == tmp_path / "traces.jsonl"
    local.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert span_exporters_from_env(tmp_path) == []


def test_saga_metrics_record_what_happened() -> None:
    reader = InMemoryMetricReader()
    metrics = create_telemetry("coordinator", metric_readers=[reader]).metrics
    metrics.saga_started("place_order", "orchestration")
    metrics.saga_started("place_order", "orchestration")
    metrics.saga_completed("place_order", "orchestration", 0.25)
    metrics.saga_compensated("place_order", "choreography", 0.5)
    metrics.saga_needs_attention("place_order", "orchestration", 9.0)
    metrics.step_finished(
        "place_order", "orchestration", "charge_payment", "charge", "rejected", 0.01
    )
    metrics.step_retried("place_order", "orchestration", "charge_payment", "charge")
    metrics.breaker_changed("payment", "open")
    with pytest.raises(ValueError):
        metrics.breaker_changed("payment", "ajar")

    data = reader.get_metrics_data()
    assert data is not None
    points: dict[str, list[Any]] = {
        metric.name: list(metric.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    (started,) = points["sagas_started"]
    assert started.value == 2
    assert dict(started.attributes or {}) == {
        "saga.type": "place_order",
        "saga.mode": "orchestration",
    }
    assert {p.attributes["saga.mode"] for p in points["sagas_compensated"]} == {"choreography"}
    assert sum(p.count for p in points["saga_duration"]) == 3
    (step,) = points["step_duration"]
    assert dict(step.attributes or {})["saga.outcome"] == "rejected"
    (breaker,) = points["breaker_state"]
    assert (breaker.value, dict(breaker.attributes or {})) == (2, {"participant": "payment"})
    assert {"sagas_completed", "sagas_needing_attention", "step_retries"} <= set(points)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = await OtlpReceiver().start()
    try:
        yield running
    finally:
        await running.stop()


def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_RESOURCE_ATTRIBUTES",
    ):
        monkeypatch.delenv(name, raising=False)


async def test_setup_exports_spans_and_metrics_over_otlp_when_configured(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _no_otel_env(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    coordinator = setup_telemetry("coordinator", tmp_path, install=False)
    assert telemetry.active() is None  # install=False touches no global
    coordinator.metrics.saga_started("place_order", "orchestration")
    coordinator.metrics.step_finished(
        "place_order", "orchestration", "reserve_stock", "reserve", "ok", 0.02
    )
    with coordinator.tracer.start_as_current_span("saga place_order"):
        pass
    await asyncio.to_thread(coordinator.shutdown)

    await wait_until(lambda: receiver.spans() and receiver.metrics(), message="an export")
    assert [(s.service, s.span.name) for s in receiver.spans()] == [
        ("coordinator", "saga place_order")
    ]
    names = {metric.name for service, metric in receiver.metrics() if service == "coordinator"}
    assert {"sagas_started", "step_duration"} <= names
    assert not (tmp_path / "traces.jsonl").exists()


def _process_env(**extra: str) -> dict[str, str]:
    """A subprocess's OTEL_* variables: only those given (empty means unset)."""
    names = (
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_SERVICE_NAME",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_RESOURCE_ATTRIBUTES",
    )
    return {**dict.fromkeys(names, ""), **extra}


@pytest.fixture
def otlp_client(exporter: InMemorySpanExporter) -> Iterator[Telemetry]:
    client = create_telemetry("test-client", [exporter], batch=False)
    yield client
    client.shutdown()


async def test_each_process_exports_its_spans_with_its_own_service_name(
    receiver: OtlpReceiver,
    otlp_client: Telemetry,
    exporter: InMemorySpanExporter,
    tmp_path: Path,
) -> None:
    """Two services export over OTLP (as to Jaeger on 4317), one writes the local file."""
    otlp = _process_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=test",
    )
    processes = {
        "order": start_service_process("order", tmp_path / "order", otlp),
        "inventory": start_service_process("inventory", tmp_path / "inventory", otlp),
        "payment": start_service_process("payment", tmp_path / "payment", _process_env()),
    }
    try:
        ports = {n: await asyncio.to_thread(p.port) for n, p in processes.items()}
        channels = {
            name: open_channel(f"127.0.0.1:{port}", interceptors=otlp_client.client_interceptors())
            for name, port in ports.items()
        }
        with otlp_client.tracer.start_as_current_span("test") as root:
            await order_pb2_grpc.OrderStub(channels["order"]).ListOrders(
                order_pb2.ListOrdersRequest()
            )
            await inventory_pb2_grpc.InventoryStub(channels["inventory"]).GetStock(
                inventory_pb2.GetStockRequest(sku="SKU-MUG")
            )
            await payment_pb2_grpc.PaymentStub(channels["payment"]).GetAccount(
                payment_pb2.GetAccountRequest(customer_id="alice")
            )
            await health_pb2_grpc.HealthStub(channels["order"]).Check(
                health_pb2.HealthCheckRequest()
            )
        for channel in channels.values():
            await channel.close()
    finally:
        # SIGTERM: graceful shutdown flushes the batched spans (the batch delay is 5 s).
        codes = [await asyncio.to_thread(p.stop) for p in processes.values()]
    assert codes == [0, 0, 0], [p.output for p in processes.values()]

    received = await wait_until(
        lambda: len(receiver.spans()) >= 2 and receiver.spans(), message="spans at the receiver"
    )
    clients = {s.name: s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT}
    root_trace = f"{root.get_span_context().trace_id:032x}"
    assert sorted((s.service, s.span.name) for s in received) == [
        ("inventory", "/sagawire.v1.Inventory/GetStock"),
        ("order", "/sagawire.v1.Order/ListOrders"),
    ]
    for span in received:
        assert span.trace_id == root_trace
        assert span.parent_id == f"{span_id(clients[span.span.name]):016x}"
    for request in receiver.trace_requests:
        for rs in request.resource_spans:
            assert attribute(rs.resource.attributes, "deployment.environment") == "test"

    # Without an OTLP endpoint the payment service wrote its spans to the local file,
    # and `sagawire trace` draws them.
    assert (tmp_path / "payment" / "traces.jsonl").exists()
    result = CliRunner().invoke(cli_app, ["trace", root_trace, "--data", str(tmp_path / "payment")])
    assert result.exit_code == 0, result.output
    assert "payment  /sagawire.v1.Payment/GetAccount" in result.output
    assert "Health" not in result.output
