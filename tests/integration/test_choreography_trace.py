"""One choreographed order is one trace across all four services and the observer.

Five real processes export over OTLP/gRPC (as to Jaeger on 4317) to a test
receiver; the trace context travels in the events' headers from the span that
published each event (the SERVER span of the call, or the CONSUMER span of the
reaction, that wrote it: the outbox write is not a hop and has no span) to the
CONSUMER span that reacts to it, over the services' gRPC streams and over NATS
JetStream (as NATS headers) alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.config import SERVICE_NAMES
from common.tokens import with_token
from protos.sagawire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from tests.coordinator_support import api_token, write_definitions
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan, attribute, orphans
from tests.nats_support import TRANSPORTS, events_over
from tests.support import Process, free_port, open_channel, start_service_process, wait_until

# SPAN_KIND_SERVER, SPAN_KIND_CLIENT and SPAN_KIND_CONSUMER in OTLP's enum.
SERVER, CLIENT, CONSUMER = 2, 3, 5


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = await OtlpReceiver().start()
    try:
        yield running
    finally:
        await running.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_choreographed_order_is_one_trace(
    receiver: OtlpReceiver, tmp_path: Path, transport: str
) -> None:
    async with events_over(transport) as events:
        await _one_trace(receiver, tmp_path, events.env())


async def _one_trace(receiver: OtlpReceiver, tmp_path: Path, events_env: dict[str, str]) -> None:
    ports = {name: free_port() for name in SERVICE_NAMES}
    env = {
        **events_env,
        **{f"SAGAWIRE_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()},
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "",
        "OTEL_RESOURCE_ATTRIBUTES": "",
    }
    processes: list[Process] = [
        start_service_process(name, tmp_path / name, env, port=ports[name])
        for name in SERVICE_NAMES
    ]
    coordinator = Process(
        ["-m", "coordinator"],
        env={
            **env,
            "SAGAWIRE_PORT": "0",
            "SAGAWIRE_DATA_DIR": str(tmp_path / "coordinator"),
            "SAGAWIRE_DEFINITIONS_FILE": str(write_definitions(tmp_path / "sagas.yaml")),
            "SAGAWIRE_MODE": "choreography",
            "SAGAWIRE_GRACE_SECONDS": "1",
        },
    )
    processes.append(coordinator)
    try:
        port = await asyncio.to_thread(coordinator.port)
        async with open_channel(f"127.0.0.1:{port}") as channel:
            api = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), api_token())
            reply = await api.PlaceOrder(
                coordinator_pb2.PlaceOrderRequest(
                    customer_id="alice",
                    items=[common_pb2.LineItem(sku="SKU-BOOK", quantity=1)],
                    destination="Berlin",
                    wait=True,
                ),
                timeout=30,
            )
        assert reply.status == coordinator_pb2.SAGA_STATUS_COMPLETED

        def saga_spans() -> list[ReceivedSpan]:
            return [
                s
                for s in receiver.spans()
                if attribute(s.span.attributes, "saga.id") == reply.saga_id
            ]

        def observed_everywhere() -> bool:
            consumers = {s.service for s in saga_spans() if s.span.kind == CONSUMER}
            # inventory, payment, shipping and order react; the coordinator observes.
            return consumers >= {*SERVICE_NAMES, "coordinator"}

        await wait_until(observed_everywhere, timeout=20, message="spans from all five processes")
    finally:
        for process in processes:
            await asyncio.to_thread(process.stop)

    spans = saga_spans()
    by_id = {s.span_id: s for s in receiver.spans()}
    assert len({s.trace_id for s in spans}) == 1, "one trace for the whole saga"
    consumers = [s for s in spans if s.span.kind == CONSUMER]
    for consumer in consumers:
        parent = by_id.get(consumer.parent_id)
        assert parent is not None and parent.span.kind in (SERVER, CONSUMER), consumer.span.name
        assert [link.span_id.hex() for link in consumer.span.links] == [parent.span_id]
    # Every process took part in the one trace.
    assert {s.service for s in spans} >= {*SERVICE_NAMES, "coordinator"}
    # The saga span covers the whole saga, to the observed outcome, not only the run
    # that started it (which ends after the first step).
    (saga,) = [s.span for s in spans if s.span.name == "saga place_order"]
    observed = [s.span for s in consumers if s.service == "coordinator"]
    assert saga.end_time_unix_nano >= max(o.start_time_unix_nano for o in observed)
    assert attribute(saga.attributes, "saga.status") == "completed"
    # Each reaction is its step's attempt (the event's consumer span), by the service
    # that ran it; the coordinator's start is the call's client span; nothing hangs from
    # a parent that never arrived.
    steps = {
        (s.service, s.span.name, attribute(s.span.attributes, "saga.outcome"))
        for s in spans
        if attribute(s.span.attributes, "saga.step") is not None
        and s.span.kind in (CLIENT, CONSUMER)
    }
    assert {(service, name) for service, name, outcome in steps if outcome == "ok"} == {
        ("coordinator", "step create_order"),
        ("inventory", "step reserve_stock"),
        ("payment", "step charge_payment"),
        ("shipping", "step schedule_shipment"),
        ("order", "step approve_order"),
    }
    # A loaded machine may make an attempt time out: it shows as a retried attempt.
    assert {outcome for _, _, outcome in steps} <= {"ok", "transient"}
    assert not orphans(receiver.spans())
    # Every process exported its metrics (flushed when it stopped): the services the
    # steps they ran, as the coordinator does in orchestration.
    sent: dict[str, set[str]] = {}
    for service, metric in receiver.metrics():
        sent.setdefault(service, set()).add(metric.name)
    for name in ("inventory", "payment", "shipping", "order"):
        assert {"step_duration", "sagawire.action.duration", "sagawire.reaction.lag"} <= sent[
            name
        ], name
    assert {"sagas_started", "sagas_completed", "step_duration"} <= sent["coordinator"]
