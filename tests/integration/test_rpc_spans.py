"""Every gRPC call's client span ends, whatever ends the call; server spans say how it ended.

The real inventory service and a traced client run in this test's loop, both exporting
over OTLP/gRPC (batched, as in production) to an in-process receiver; the spans are
read back from the receiver, so a span that never ends never shows up. Latency is
injected through the service's Admin API, as an operator would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from common.certs import COORDINATOR
from common.server import RunningServer, start_server
from common.telemetry import Telemetry
from contract.messages import pack
from protos.sagawire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    order_saga_pb2,
    participant_pb2,
    participant_pb2_grpc,
)
from services.launcher import spec_of
from services.runtime import DomainService
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan, orphans
from tests.support import open_channel, service_settings, wait_until
from tests.telemetry_support import otlp_telemetry

EXECUTE = "/sagawire.v1.Participant/Execute"
SERVER, CLIENT = 2, 3  # OTLP span kinds
CANCELLED, DEADLINE_EXCEEDED, FAILED_PRECONDITION = 1, 4, 9


def reserve(sku: str = "SKU-MUG", quantity: int = 1) -> participant_pb2.StepRequest:
    data = order_saga_pb2.OrderSagaData(
        order_id=str(uuid.uuid4()),
        customer_id="alice",
        destination="Berlin",
        items=[common_pb2.LineItem(sku=sku, quantity=quantity)],
    )
    return participant_pb2.StepRequest(
        saga_id=str(uuid.uuid4()), step="reserve_stock", action="reserve", payload=pack(data)
    )


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = await OtlpReceiver().start()
    try:
        yield running
    finally:
        await running.stop()


@dataclass
class Inventory:
    app: DomainService
    running: RunningServer
    server: Telemetry
    client: Telemetry
    channel: grpc.aio.Channel
    receiver: OtlpReceiver

    @property
    def participant(self) -> participant_pb2_grpc.ParticipantStub:
        return participant_pb2_grpc.ParticipantStub(self.channel)

    async def slow_reserve(self, latency_ms: int) -> None:
        """Delay every reserve, through the Admin API (the operator's certificate)."""
        plan = admin_pb2.FaultPlan(
            actions=[admin_pb2.ActionFault(action="reserve", latency_ms=latency_ms)]
        )
        async with open_channel(self.app.admin_address) as channel:
            await admin_pb2_grpc.AdminStub(channel).SetFaults(plan)

    async def in_flight(self) -> None:
        """Until a reserve has reached the server and waits out its latency."""
        await wait_until(lambda: self.app.faults.calls["reserve"] >= 1, message="a reserve")

    async def received(
        self, done: Callable[[list[ReceivedSpan]], bool], what: str
    ) -> list[ReceivedSpan]:
        """The spans at the receiver once ``done`` holds of them (flushing both processes)."""

        async def check() -> list[ReceivedSpan] | None:
            await asyncio.to_thread(self.server.force_flush)
            await asyncio.to_thread(self.client.force_flush)
            spans = self.receiver.spans()
            return spans if done(spans) else None

        found: list[ReceivedSpan] = await wait_until(check, message=what)
        return found


@pytest.fixture
async def inventory(tmp_path: Path, receiver: OtlpReceiver) -> AsyncIterator[Inventory]:
    server = otlp_telemetry("inventory", receiver)
    client = otlp_telemetry("test-client", receiver)
    settings = service_settings(tmp_path)
    app = DomainService(spec_of("inventory"), settings)
    running = await start_server(app, settings, telemetry=server)
    channel = open_channel(running.address, COORDINATOR, interceptors=client.client_interceptors())
    try:
        yield Inventory(app, running, server, client, channel, receiver)
    finally:
        await channel.close()
        await running.stop()
        await asyncio.to_thread(client.shutdown)


def _executes(spans: list[ReceivedSpan], kind: int) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == kind and s.name == EXECUTE]


def _client_and_server(spans: list[ReceivedSpan]) -> bool:
    return bool(_executes(spans, CLIENT)) and bool(_executes(spans, SERVER))


def _seconds(span: ReceivedSpan) -> float:
    return (span.span.end_time_unix_nano - span.span.start_time_unix_nano) / 1e9


async def test_a_call_cancelled_in_flight_ends_its_client_span_and_the_servers(
    inventory: Inventory,
) -> None:
    await inventory.slow_reserve(5_000)

    async def execute() -> participant_pb2.StepReply:
        reply: participant_pb2.StepReply = await inventory.participant.Execute(reserve())
        return reply

    with inventory.client.tracer.start_as_current_span("caller"):
        # As the runner does to a step whose sibling failed: the task awaiting it is cancelled.
        call = asyncio.create_task(execute())
        await inventory.in_flight()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    spans = await inventory.received(_client_and_server, "both spans of the cancelled call")
    (client,) = _executes(spans, CLIENT)
    (server,) = _executes(spans, SERVER)
    assert (client.attribute("rpc.grpc.status_code"), client.is_error) == (CANCELLED, True)
    # The server learnt the client gave up and stopped: CANCELLED is the caller's doing.
    assert (server.attribute("rpc.grpc.status_code"), server.is_error) == (CANCELLED, False)
    assert _seconds(server) < 2.5
    assert server.parent_id == client.span_id
    assert not orphans(spans)
    one_trace = [s for s in spans if s.trace_id == client.trace_id]
    assert sorted(s.name for s in one_trace) == sorted(["caller", EXECUTE, EXECUTE])


async def test_a_call_past_its_deadline_is_deadline_exceeded_on_both_sides(
    inventory: Inventory,
) -> None:
    await inventory.slow_reserve(5_000)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await inventory.participant.Execute(reserve(), timeout=0.3)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    spans = await inventory.received(_client_and_server, "both spans of the late call")
    (client,) = _executes(spans, CLIENT)
    (server,) = _executes(spans, SERVER)
    assert (client.attribute("rpc.grpc.status_code"), client.is_error) == (DEADLINE_EXCEEDED, True)
    assert (server.attribute("rpc.grpc.status_code"), server.is_error) == (DEADLINE_EXCEEDED, True)
    assert _seconds(server) < 2.5  # ended when the deadline passed, not after the latency
    assert server.parent_id == client.span_id
    assert not orphans(spans)


async def test_an_aborted_call_ends_its_server_span_first_and_records_no_exception(
    inventory: Inventory,
) -> None:
    # One SKU-RARE exists: inventory says no (FAILED_PRECONDITION, a business rejection).
    with pytest.raises(grpc.aio.AioRpcError) as rejected:
        await inventory.participant.Execute(reserve("SKU-RARE", 2))
    assert rejected.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    spans = await inventory.received(_client_and_server, "both spans of the rejected call")
    (client,) = _executes(spans, CLIENT)
    (server,) = _executes(spans, SERVER)
    assert client.attribute("rpc.grpc.status_code") == FAILED_PRECONDITION
    assert server.attribute("rpc.grpc.status_code") == FAILED_PRECONDITION
    # The status is the story; the AbortError behind it is no exception event (it was two).
    assert "exception" not in server.event_names
    assert server.span.end_time_unix_nano <= client.span.end_time_unix_nano


async def test_an_exception_a_handler_lets_out_is_recorded_once(
    receiver: OtlpReceiver,
) -> None:
    telemetry = otlp_telemetry("broken", receiver)

    async def broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("a bug")

    server = grpc.aio.server(interceptors=[telemetry.server_interceptor()])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Broken", {"Call": grpc.unary_unary_rpc_method_handler(broken)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await channel.unary_unary("/test.Broken/Call")(b"")
        assert failed.value.code() == grpc.StatusCode.UNKNOWN
    finally:
        await server.stop(None)
        await asyncio.to_thread(telemetry.shutdown)

    (span,) = await wait_until(receiver.spans, message="the broken call's span")
    assert span.event_names == ["exception"]
    assert (span.attribute("rpc.grpc.status_code"), span.is_error) == (2, True)


async def test_a_server_stream_has_its_spans_whether_read_to_the_end_or_cancelled(
    receiver: OtlpReceiver,
) -> None:
    server_telemetry = otlp_telemetry("streamer", receiver)
    client_telemetry = otlp_telemetry("reader", receiver)
    release = asyncio.Event()

    async def numbers(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for number in range(3):
            yield bytes([number])
        if request == b"wait":
            await release.wait()  # held open until the reader gives up

    server = grpc.aio.server(interceptors=[server_telemetry.server_interceptor()])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Stream", {"Numbers": grpc.unary_stream_rpc_method_handler(numbers)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=client_telemetry.client_interceptors()
        ) as channel:
            call = channel.unary_stream("/test.Stream/Numbers")
            assert [reply async for reply in call(b"all")] == [b"\x00", b"\x01", b"\x02"]
            held = call(b"wait")
            assert await held.read() == b"\x00"
            held.cancel()
            # The server stops when the reader cancels (its wait is cancelled).
    finally:
        await server.stop(1)
        await asyncio.to_thread(client_telemetry.shutdown)
        await asyncio.to_thread(server_telemetry.shutdown)

    spans = await wait_until(
        lambda: len(receiver.spans()) >= 4 and receiver.spans(), message="four spans"
    )
    clients = sorted(
        (s for s in spans if s.kind == CLIENT), key=lambda s: s.span.start_time_unix_nano
    )
    servers = {s.parent_id: s for s in spans if s.kind == SERVER}
    assert [c.attribute("rpc.grpc.status_code") for c in clients] == [0, CANCELLED]
    assert [servers[c.span_id].attribute("rpc.grpc.status_code") for c in clients] == [
        0,
        CANCELLED,
    ]
    assert not orphans(spans)
