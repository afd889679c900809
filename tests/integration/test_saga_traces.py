"""One orchestrated order is one trace: the coordinator and the four services, in memory.

Every process runs in this test's event loop with its own telemetry (its own
``service.name``), all exporting to one ``InMemorySpanExporter``
(see :mod:`tests.telemetry_support`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import typer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from typer.testing import CliRunner

from cli import sagas
from common.config import SERVICE_NAMES
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import write_definitions
from tests.support import wait_until
from tests.telemetry_support import (
    PLACE_ORDER,
    RETRY_SAGA,
    TracedStack,
    attribute,
    is_saga_span,
    saga_trace,
    service_of,
    span_id_of,
    trace_id_of,
    traced_stack,
)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[TracedStack]:
    async with traced_stack(tmp_path) as traced:
        yield traced


def _parent(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, span.name
    return by_id[span.parent.span_id]


def _attempts(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted(
        # The coordinator's attempts: each is the CLIENT span of its call.
        (s for s in spans if attribute(s, "saga.step") is not None and s.kind == SpanKind.CLIENT),
        key=lambda s: s.start_time or 0,
    )


async def test_one_orchestrated_order_is_one_trace_across_the_five_processes(
    stack: TracedStack,
) -> None:
    placed = await stack.stack.place("alice")
    assert placed.status == pb.SAGA_STATUS_COMPLETED

    spans = await saga_trace(stack, placed.saga_id)
    by_id = {span_id_of(s): s for s in spans}
    (root,) = [s for s in spans if s.name == PLACE_ORDER]
    assert service_of(root) == "coordinator" and root.parent is None
    # Every span of the trace hangs, through spans of the trace, from the PlaceOrder call.
    for span in spans:
        ancestor = span
        while ancestor is not root:
            ancestor = _parent(ancestor, by_id)
    # Nothing of this saga is in another trace.
    saga_traces = {
        trace_id_of(s) for s in stack.spans() if attribute(s, "saga.id") == placed.saga_id
    }
    assert saga_traces == {trace_id_of(root)}

    # PlaceOrder -> saga -> step attempt (the call's CLIENT span) -> the participant's
    # server span: one span per hop, no wrapper around the call.
    (saga,) = [s for s in spans if is_saga_span(s, placed.saga_id)]
    assert _parent(saga, by_id) is root
    assert (saga.name, attribute(saga, "saga.status")) == ("saga place_order", "completed")
    servers = [s for s in spans if s.kind == SpanKind.SERVER and s is not root]
    assert sorted(str(service_of(s)) for s in servers) == sorted([*SERVICE_NAMES, "order"])
    called = []
    for server in servers:
        assert server.parent is not None and server.parent.is_remote
        step = _parent(server, by_id)
        assert (step.kind, service_of(step)) == (SpanKind.CLIENT, "coordinator")
        assert _parent(step, by_id) is saga
        assert step.name == f"step {attribute(step, 'saga.step')}"
        assert attribute(step, "rpc.method") == server.name.rpartition("/")[2]
        assert attribute(step, "rpc.grpc.status_code") == 0
        called.append((attribute(step, "saga.step"), service_of(server)))
    assert sorted(called) == [
        ("approve_order", "order"),
        ("charge_payment", "payment"),
        ("create_order", "order"),
        ("reserve_stock", "inventory"),
        ("schedule_shipment", "shipping"),
    ]
    for step in _attempts(spans):
        assert _parent(step, by_id) is saga
        assert attribute(step, "saga.id") == placed.saga_id
        assert (attribute(step, "saga.phase"), attribute(step, "saga.attempt")) == ("execute", 1)
        assert (attribute(step, "saga.outcome"), attribute(step, "saga.barrier")) == (
            "ok",
            "applied",
        )
    assert all(s.status.status_code != StatusCode.ERROR for s in spans)

    shown = await stack.stack.saga(placed.saga_id)
    assert shown.trace_id == f"{trace_id_of(root):032x}"


async def test_saga_and_step_spans_show_the_saga_and_its_compensation(
    stack: TracedStack,
) -> None:
    # carol's small balance declines the charge: shipping is never called.
    for customer, outcome in (("alice", "completed"), ("carol", "compensated")):
        response = await stack.stack.place(customer)
        involved = SERVICE_NAMES if outcome == "completed" else ("order", "inventory", "payment")
        spans = await saga_trace(stack, response.saga_id, involved)
        (root,) = [s for s in spans if s.name == PLACE_ORDER]
        (saga,) = [s for s in spans if is_saga_span(s, response.saga_id)]
        assert saga.parent is not None and saga.parent.span_id == span_id_of(root)
        assert attribute(saga, "saga.type") == "place_order"
        assert attribute(saga, "saga.mode") == "orchestration"
        assert attribute(saga, "saga.status") == outcome
        steps = _attempts(spans)
        assert steps and all(s.parent and s.parent.span_id == span_id_of(saga) for s in steps)
        for step in steps:
            assert {"saga.id", "saga.action", "saga.attempt", "saga.outcome"} <= set(
                step.attributes or {}
            )
        # Every call to a participant is a step attempt's span.
        for client in (s for s in spans if s.kind == SpanKind.CLIENT):
            assert "saga.step" in (client.attributes or {})
        trace_id = (await stack.stack.saga(response.saga_id)).trace_id
        assert trace_id == f"{trace_id_of(root):032x}"
        if outcome == "compensated":
            assert response.status == pb.SAGA_STATUS_COMPENSATED
            assert saga.status.status_code == StatusCode.ERROR
            rejected = [s for s in steps if attribute(s, "saga.outcome") == "rejected"]
            assert rejected and all(s.status.status_code == StatusCode.ERROR for s in rejected)
            assert attribute(rejected[0], "saga.error_reason") == "INSUFFICIENT_FUNDS"
            compensations = {attribute(s, "saga.action") for s in steps}
            assert {"release", "cancel_order"} <= compensations
            undone = [s for s in steps if attribute(s, "saga.phase") == "compensate"]
            assert sorted((s.name, service_of(_callee(s, spans))) for s in undone) == [
                ("compensate create_order", "order"),
                ("compensate reserve_stock", "inventory"),
            ]
            assert all(attribute(s, "saga.outcome") == "ok" for s in undone)
            # Reverse dependency order: the order is cancelled once the stock is released.
            release, cancel = sorted(undone, key=lambda s: s.start_time or 0)
            assert attribute(release, "saga.action") == "release"
            assert (cancel.start_time or 0) >= (release.end_time or 0)
        else:
            assert saga.status.status_code == StatusCode.UNSET


def _callee(step: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    """The participant's server span of the call made in the step attempt ``step``."""
    (server,) = [s for s in spans if s.parent and s.parent.span_id == span_id_of(step)]
    return server


async def test_retries_and_breaker_changes_are_span_events(tmp_path: Path) -> None:
    # One failure opens inventory's breaker; the retry (after >= 10 ms of backoff)
    # finds the 1 ms reset timeout passed, goes through as the half-open trial, closes it.
    async with traced_stack(
        tmp_path, breaker_minimum_calls=1, breaker_reset_timeout=0.001
    ) as traced:
        await traced.stack.faults("inventory", reserve=(1, 0))
        placed = await traced.stack.place("alice")
        assert placed.status == pb.SAGA_STATUS_COMPLETED
        spans = await saga_trace(traced, placed.saga_id)
        (saga,) = [s for s in spans if is_saga_span(s, placed.saga_id)]
        first, second = [s for s in _attempts(spans) if s.name == "step reserve_stock"]
        assert [attribute(s, "saga.attempt") for s in (first, second)] == [1, 2]
        assert (attribute(first, "saga.outcome"), first.status.status_code) == (
            "transient",
            StatusCode.ERROR,
        )
        assert attribute(first, "saga.error_reason") == "UNAVAILABLE"
        assert attribute(second, "saga.outcome") == "ok"

        (retry,) = [e for e in saga.events if e.name == "retry"]
        assert retry.attributes is not None
        assert (retry.attributes["saga.step"], retry.attributes["saga.attempt"]) == (
            "reserve_stock",
            2,
        )
        wait = retry.attributes["retry.wait_s"]
        assert isinstance(wait, float) and wait > 0
        assert retry.attributes["saga.error_reason"] == "UNAVAILABLE"

        def changes(span: ReadableSpan) -> list[tuple[object, object, object]]:
            return [
                (
                    (e.attributes or {}).get("breaker.participant"),
                    (e.attributes or {}).get("breaker.from"),
                    (e.attributes or {}).get("breaker.to"),
                )
                for e in span.events
                if e.name == "breaker.state_change"
            ]

        assert changes(first) == [("inventory", "closed", "open")]
        assert changes(second) == [
            ("inventory", "open", "half-open"),
            ("inventory", "half-open", "closed"),
        ]


async def test_a_retried_saga_continues_its_trace(tmp_path: Path) -> None:
    # The release fails past its budget of 3: the saga needs attention; RetrySaga ends it.
    definitions = write_definitions(tmp_path / "sagas.yaml", compensation_retry={"max_attempts": 3})
    async with traced_stack(tmp_path, definitions=definitions) as traced:
        await traced.stack.faults("inventory", release=(3, 0))
        placed = await traced.stack.place("carol")
        assert placed.status == pb.SAGA_STATUS_NEEDS_ATTENTION
        first = await saga_trace(traced, placed.saga_id, ("order", "inventory", "payment"))
        (first_run,) = [s for s in first if is_saga_span(s, placed.saga_id)]
        assert attribute(first_run, "saga.status") == "needs_attention"
        assert first_run.status.status_code == StatusCode.ERROR
        trace_id = trace_id_of(first_run)

        await traced.stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=placed.saga_id))
        settled = await traced.stack.settled(placed.saga_id)
        assert settled.status == pb.SAGA_STATUS_COMPENSATED
        assert settled.trace_id == f"{trace_id:032x}"

        def second_run() -> ReadableSpan | None:
            runs = [s for s in traced.spans() if is_saga_span(s, placed.saga_id)]
            return runs[1] if len(runs) == 2 else None

        run = await wait_until(second_run, message="the retried saga's span")
        # The same trace as the first run, and a link to the RetrySaga call.
        assert trace_id_of(run) == trace_id
        assert run.parent is not None and run.parent.is_remote
        # Nested under the first run's saga span (a real span), not a second root.
        assert run.parent.span_id == span_id_of(first_run)
        (resumed,) = [e for e in run.events if e.name == "resumed"]
        assert (resumed.attributes or {}).get("saga.resumed_by") == "retried"
        (retry_call,) = [s for s in traced.spans() if s.name == RETRY_SAGA]
        assert [link.context.span_id for link in run.links] == [span_id_of(retry_call)]
        assert attribute(run, "saga.status") == "compensated"
        # The release's fourth attempt, then the order's cancellation it held back.
        undone = _attempts(
            [s for s in traced.spans() if s.parent and s.parent.span_id == span_id_of(run)]
        )
        assert [
            (s.name, attribute(s, "saga.attempt"), attribute(s, "saga.outcome")) for s in undone
        ] == [
            ("compensate reserve_stock", 4, "ok"),
            ("compensate create_order", 1, "ok"),
        ]


async def test_saga_show_prints_the_trace_id(stack: TracedStack) -> None:
    placed = await stack.stack.place("alice")
    trace_id = (await stack.stack.saga(placed.saga_id)).trace_id
    assert len(trace_id) == 32

    app = typer.Typer()
    sagas.register(app)
    env = {"SAGAWIRE_COORDINATOR_ADDR": stack.stack.address, "COLUMNS": "200"}
    # The CLI is a blocking gRPC client; the servers run in this loop.
    shown = await asyncio.to_thread(
        CliRunner().invoke, app, ["saga", "show", placed.saga_id], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert f"trace {trace_id}" in shown.output
