"""A saga's trace tells the whole story, in both modes, as an OTLP collector receives it.

The coordinator and the four services run in this test's loop, each with its own
telemetry exporting over OTLP/gRPC (batched) to an in-process receiver
(:func:`tests.telemetry_support.traced_stack`). A span that never ends never arrives,
so "no orphan" here means every parent a span names was received.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from common.logs import log_handler
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan, orphans
from tests.support import wait_until
from tests.telemetry_support import PLACE_ORDER, TracedStack, traced_stack

SERVER, CLIENT, CONSUMER = 2, 3, 5  # OTLP span kinds
MODES = ["orchestration", "choreography"]


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    running = await OtlpReceiver().start()
    try:
        yield running
    finally:
        await running.stop()


async def received(
    traced: TracedStack,
    receiver: OtlpReceiver,
    done: Callable[[list[ReceivedSpan]], bool],
    what: str,
) -> list[ReceivedSpan]:
    """The spans at the receiver once ``done`` holds of them (flushing every process)."""

    async def check() -> list[ReceivedSpan] | None:
        for telemetry in traced.telemetry.values():
            await asyncio.to_thread(telemetry.tracer_provider.force_flush)
        spans = receiver.spans()
        return spans if done(spans) else None

    found: list[ReceivedSpan] = await wait_until(check, timeout=20, message=what)
    return found


def saga_spans(spans: list[ReceivedSpan], saga_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.attribute("saga.id") == saga_id]


def the_saga_span(spans: list[ReceivedSpan], saga_id: str) -> ReceivedSpan | None:
    """The saga's span (its first run's), once it ended settled."""
    for span in saga_spans(spans, saga_id):
        if span.name.startswith("saga ") and span.attribute("saga.status") in (
            "completed",
            "compensated",
        ):
            return span
    return None


@pytest.mark.parametrize("mode", MODES)
async def test_a_saga_placed_without_waiting_is_a_trace_of_its_own_linked_both_ways(
    tmp_path: Path, receiver: OtlpReceiver, mode: str
) -> None:
    async with traced_stack(
        tmp_path,
        reactions=mode == "choreography",
        receiver=receiver,
        mode=mode,
    ) as traced:
        placed = await traced.stack.place("alice", wait=False)
        settled = await traced.stack.settled(placed.saga_id)
        assert settled.status == pb.SAGA_STATUS_COMPLETED
        spans = await received(
            traced,
            receiver,
            lambda spans: the_saga_span(spans, placed.saga_id) is not None,
            "the saga's span",
        )

    saga = the_saga_span(spans, placed.saga_id)
    assert saga is not None
    (call,) = [s for s in spans if s.name == PLACE_ORDER and s.kind == SERVER]
    # The saga outlives the call that answered at once: a root of its own trace, the one
    # GetSaga names, and the two spans name each other.
    assert saga.parent_id == ""
    assert saga.trace_id == settled.trace_id != call.trace_id
    assert saga.links == [(call.trace_id, call.span_id)]
    assert call.links == [(saga.trace_id, saga.span_id)]
    assert {s.trace_id for s in saga_spans(spans, placed.saga_id)} == {saga.trace_id}
    assert [s.name for s in spans if s.trace_id == call.trace_id] == [PLACE_ORDER]
    assert not orphans(spans)


@dataclass(frozen=True)
class Order:
    customer: str
    items: tuple[tuple[str, int], ...]
    to: str
    # Faults of the payment service while the saga runs: action -> (fail_next, latency_ms).
    payment_faults: dict[str, tuple[int, int]] = field(default_factory=dict)


OK, REJECTED, TRANSIENT = "ok", "error rejected", "error transient"
FORWARD = ("create_order", "reserve_stock", "charge_payment", "schedule_shipment")

# Four sagas, and the attempts each must show, with their outcomes, in both modes (as
# `sagawire trace` labels them). carol's charge is slowed so her reservation (parallel
# in orchestration) lands first, as in choreography, where it comes first.
SAGAS: dict[str, tuple[Order, list[tuple[str, str]]]] = {
    "completed": (
        Order("alice", (("SKU-MUG", 1),), "Berlin"),
        [*((f"step {s} #1", OK) for s in FORWARD), ("step approve_order #1", OK)],
    ),
    "rejected": (
        Order("carol", (("SKU-LAMP", 1),), "Lyon", {"charge": (0, 300)}),
        [
            ("step create_order #1", OK),
            ("step reserve_stock #1", OK),
            ("step charge_payment #1", REJECTED),
            ("compensate reserve_stock #1", OK),
            ("compensate create_order #1", OK),
        ],
    ),
    "compensated after the pivot": (
        Order("dave", (("SKU-LAMP", 1),), "Atlantis"),
        [
            *((f"step {s} #1", OK) for s in FORWARD[:3]),
            ("step schedule_shipment #1", REJECTED),
            ("compensate charge_payment #1", OK),
            ("compensate reserve_stock #1", OK),
            ("compensate create_order #1", OK),
        ],
    ),
    "retried": (
        Order("alice", (("SKU-BOOK", 1),), "Madrid", {"charge": (2, 0)}),
        [
            ("step create_order #1", OK),
            ("step reserve_stock #1", OK),
            ("step charge_payment #1", TRANSIENT),
            ("step charge_payment #2", TRANSIENT),
            ("step charge_payment #3", OK),
            ("step schedule_shipment #1", OK),
            ("step approve_order #1", OK),
        ],
    ),
}
# Who runs each step's attempts: the coordinator in orchestration (and the first step
# in choreography); in choreography the service reacting to an event.
RUNS = {
    "create_order": "order",
    "reserve_stock": "inventory",
    "charge_payment": "payment",
    "schedule_shipment": "shipping",
    "approve_order": "order",
}


def _attempt_lines(output: str) -> list[tuple[str, str, str]]:
    """(service, attempt, status) of every step and compensation line of a waterfall."""
    found = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("|")]
        words = cells[0].split()
        if len(words) >= 4 and words[1] in ("step", "compensate"):
            found.append((words[0], f"{words[1]} {words[2]} {words[3]}", cells[-1]))
    return found


@pytest.mark.parametrize("mode", MODES)
async def test_four_sagas_each_one_trace_with_every_attempt_and_its_outcome(
    tmp_path: Path, receiver: OtlpReceiver, mode: str
) -> None:
    choreography = mode == "choreography"
    lines = io.StringIO()
    handler = log_handler("test", lines)
    logging.getLogger("common.inbox").addHandler(handler)
    placed: dict[str, pb.PlaceOrderResponse] = {}
    try:
        async with traced_stack(
            tmp_path, reactions=choreography, receiver=receiver, mode=mode, trace_files=True
        ) as traced:
            for name, (order, _) in SAGAS.items():
                await traced.stack.faults("payment", **order.payment_faults)
                placed[name] = await traced.stack.place(order.customer, order.items, order.to)
            await traced.stack.faults("payment")

            def settled(spans: list[ReceivedSpan]) -> bool:
                return all(the_saga_span(spans, p.saga_id) for p in placed.values()) and all(
                    len(_attempts(spans, placed[name].saga_id)) >= len(expected)
                    for name, (_, expected) in SAGAS.items()
                )

            spans = await received(traced, receiver, settled, "every attempt of the four sagas")
            retries = {
                process: traced.value("step_retries", process, **{"saga.step": "charge_payment"})
                for process in traced.readers
            }
            steps = {
                str(attributes["saga.step"])
                for process in traced.readers
                for attributes, _ in traced.points("step_duration", process)
                if attributes.get("saga.mode") == mode
            }
    finally:
        logging.getLogger("common.inbox").removeHandler(handler)

    assert [p.status for p in placed.values()] == [
        pb.SAGA_STATUS_COMPLETED,
        pb.SAGA_STATUS_COMPENSATED,
        pb.SAGA_STATUS_COMPENSATED,
        pb.SAGA_STATUS_COMPLETED,
    ]
    assert not orphans(spans)
    for name, (_, expected) in SAGAS.items():
        saga_id = placed[name].saga_id
        # One trace: the call's, the saga's, every attempt's and every event's.
        assert len({s.trace_id for s in saga_spans(spans, saga_id)}) == 1, name
        # PlaceOrder waited for the saga: the saga's span ends within the call's.
        saga = the_saga_span(spans, saga_id)
        (call,) = [s for s in spans if s.span_id == (saga.parent_id if saga else "")]
        assert call.name == PLACE_ORDER
        assert saga is not None
        assert saga.span.end_time_unix_nano <= call.span.end_time_unix_nano, name

        # `sagawire trace` draws the same attempts with the same outcomes in both modes,
        # each by the process that ran it.
        shown = CliRunner().invoke(cli_app, ["trace", saga_id, "--data", str(tmp_path)])
        assert shown.exit_code == 0, shown.output
        drawn = _attempt_lines(shown.output)
        assert sorted((a, s) for _, a, s in drawn) == sorted(expected), (name, shown.output)
        for service, attempt, _ in drawn:
            step = attempt.split()[1]
            first = attempt.startswith("step create_order")
            assert service == ("coordinator" if not choreography or first else RUNS[step]), (
                name,
                attempt,
                service,
            )

        # A rejection is an error with its reason, where it happened.
        for span in _attempts(spans, saga_id):
            assert span.attribute("saga.outcome") is not None
            if span.attribute("saga.outcome") == "rejected":
                assert span.is_error
                assert span.attribute("saga.error_reason") in (
                    "INSUFFICIENT_FUNDS",
                    "UNSERVICEABLE_DESTINATION",
                )

    # Retries are counted where they were made; every step's duration is recorded.
    runner = "payment" if choreography else "coordinator"
    assert retries[runner] == 2 and sum(retries.values()) == 2
    assert steps == {*FORWARD, "approve_order"}
    if choreography:
        retried = [line for line in lines.getvalue().splitlines() if "retrying" in line]
        assert len(retried) == 2, lines.getvalue()
        trace_id = placed["retried"].saga_id
        for line in retried:
            assert f"saga={trace_id}" in line and " trace_id=" in line, line


def _attempts(spans: list[ReceivedSpan], saga_id: str) -> list[ReceivedSpan]:
    """Every step attempt: the coordinator's call (a CLIENT span), or a service's reaction
    (the CONSUMER span of the event it reacts to)."""
    return [
        s
        for s in saga_spans(spans, saga_id)
        if s.kind in (CLIENT, CONSUMER) and s.attribute("saga.step") is not None
    ]


async def test_a_step_cancelled_by_its_siblings_failure_leaves_no_orphan(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    # carol's reservation is slowed: her declined charge (beside it) interrupts it in flight.
    async with traced_stack(tmp_path, receiver=receiver) as traced:
        await traced.stack.faults("inventory", reserve=(0, 2_000))
        placed = await traced.stack.place("carol", (("SKU-LAMP", 1),), "Lyon")
        assert placed.status == pb.SAGA_STATUS_COMPENSATED

        def interrupted(spans: list[ReceivedSpan]) -> bool:
            servers = [
                s
                for s in spans
                if s.kind == SERVER and s.name.endswith("Execute") and s.service == "inventory"
            ]
            return the_saga_span(spans, placed.saga_id) is not None and bool(servers)

        spans = await received(traced, receiver, interrupted, "the interrupted reservation")
        nulled = traced.value(
            "sagawire.barrier.decisions", "inventory", **{"barrier.decision": "null"}
        )

    by_id = {s.span_id: s for s in spans}
    (reserve,) = [s for s in _attempts(spans, placed.saga_id) if s.name == "step reserve_stock"]
    assert reserve.attribute("saga.outcome") == "interrupted"
    # The attempt is its call's client span, ended CANCELLED, and the inventory's server
    # span hangs from it, CANCELLED too: the server stopped when the coordinator gave up.
    assert reserve.kind == CLIENT
    assert (reserve.attribute("rpc.grpc.status_code"), reserve.is_error) == (1, True)
    (server,) = [s for s in spans if s.parent_id == reserve.span_id]
    assert (server.service, server.attribute("rpc.grpc.status_code")) == ("inventory", 1)
    assert not orphans(spans)
    assert {s.trace_id for s in saga_spans(spans, placed.saga_id)} == {reserve.trace_id}
    # No server span outlives the client span that waits for it, but for the call the
    # client gave up on.
    for span in spans:
        parent = by_id.get(span.parent_id)
        if span.kind == SERVER and parent is not None and span is not server:
            assert span.span.end_time_unix_nano <= parent.span.end_time_unix_nano, span.name
    # The reservation never reached the barrier: its compensation was a null one.
    assert nulled == 1


@pytest.mark.parametrize("mode", MODES)
async def test_every_process_exports_its_metrics_over_otlp(
    tmp_path: Path, receiver: OtlpReceiver, mode: str
) -> None:
    async with traced_stack(tmp_path, reactions=True, receiver=receiver, mode=mode) as traced:
        await traced.stack.faults("payment", charge=(1, 0))
        for customer, to in (("alice", "Berlin"), ("dave", "Atlantis")):
            await traced.stack.place(customer, (("SKU-MUG", 1),), to)
        await traced.stack.faults("payment")

        def names() -> dict[str, set[str]]:
            found: dict[str, set[str]] = {}
            for service, metric in receiver.metrics():
                found.setdefault(service, set()).add(metric.name)
            return found

        services = {
            "sagawire.action.duration",
            "sagawire.barrier.decisions",
            "sagawire.consumer.lag",
            "sagawire.outbox.backlog",
            "rpc.server.call.duration",
        }
        reacting = {
            "step_duration",
            "step_retries",
            "sagawire.reaction.lag",
            "messaging.process.duration",
        }
        coordinator = {
            "sagas_started",
            "sagas_completed",
            "sagas_compensated",
            "saga_duration",
            "step_duration",
            "breaker_state",
            "rpc.server.call.duration",
            "rpc.client.call.duration",
        }
        if mode == "orchestration":
            coordinator.add("step_retries")

        # In choreography only the first step is a call (order's): the other services
        # react, and record the steps they run.
        choreography = mode == "choreography"
        wanted = {
            "order": services | (reacting - {"step_retries"} if choreography else set()),
            "inventory": services,
            "payment": services | (reacting if choreography else set()),
            "shipping": services,
            "coordinator": coordinator,
        }
        if choreography:
            for reactor in ("inventory", "shipping"):
                wanted[reactor] = wanted[reactor] - {"rpc.server.call.duration"} | (
                    reacting - {"step_retries"}
                )

        def complete() -> bool:
            found = names()
            return all(wanted[p] <= found.get(p, set()) for p in wanted)

        await wait_until(complete, timeout=20, message=f"every metric at the receiver ({mode})")
        # The stack's own followers are caught up once the sagas are done.
        await wait_until(
            lambda: traced.value("sagawire.outbox.backlog", "payment") == 0,
            message="payment's followers caught up",
        )
        followers = traced.values_by(
            "sagawire.consumer.lag", "messaging.consumer.group.name", "payment"
        )
        # Who follows payment: inventory and shipping (and the observer, in choreography);
        # all caught up.
        assert {"inventory", "shipping"} <= set(followers)
        assert set(followers.values()) == {0}
