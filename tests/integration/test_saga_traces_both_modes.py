"""A saga's trace tells the whole story, in both modes, as an OTLP collector receives it.

The coordinator and the four services run in this test's loop, each with its own
telemetry exporting over OTLP/gRPC (batched) to an in-process receiver
(:func:`tests.telemetry_support.traced_stack`). A span that never ends never arrives,
so "no orphan" here means every parent a span names was received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan, orphans
from tests.support import wait_until
from tests.telemetry_support import PLACE_ORDER, TracedStack, traced_stack

SERVER, CLIENT = 2, 3  # OTLP span kinds
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
