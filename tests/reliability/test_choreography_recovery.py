"""A choreographed saga survives its coordinator's death at the worst moment.

The coordinator (a real subprocess) is killed right after its create_order call
returned, before it logged the result. The services carry the saga on without it
and finish it — completed, or compensated all the way back. The restarted
coordinator re-sends create_order (replayed, or refused by the barrier because it
was already undone) and must report the outcome the services reached, with the
step that really failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.crash import CRASH_EXIT_CODE
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2
from tests.coordinator_support import (
    FINAL,
    running_stack,
    start_coordinator_process,
    stop_process,
    wait_exit,
    write_definitions,
)
from tests.support import wait_until


@pytest.mark.parametrize(
    ("customer", "sku", "to", "status", "failed_step"),
    [
        ("alice", "SKU-MUG", "Berlin", pb.SAGA_STATUS_COMPLETED, ""),
        ("carol", "SKU-LAMP", "Berlin", pb.SAGA_STATUS_COMPENSATED, "charge_payment"),
        ("alice", "SKU-MUG", "Atlantis", pb.SAGA_STATUS_COMPENSATED, "schedule_shipment"),
    ],
)
async def test_coordinator_killed_after_starting_the_flow_reports_its_real_outcome(
    tmp_path: Path, customer: str, sku: str, to: str, status: int, failed_step: str
) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml")
    choreography = {"SAGAWIRE_MODE": "choreography"}
    async with running_stack(tmp_path, in_process=False) as stack:
        first = start_coordinator_process(
            stack.cluster,
            tmp_path / "coordinator",
            definitions,
            crash_at="after_call:create_order",
            env=choreography,
        )
        await stack.reconnect(f"127.0.0.1:{await asyncio.to_thread(first.port)}")
        reply = await stack.place(customer, [(sku, 1)], to, wait=False)
        assert await wait_exit(first) == CRASH_EXIT_CODE, first.output

        async def finished_without_coordinator() -> bool:
            order = await stack.order(reply.order_id)
            return order.status != order_pb2.ORDER_STATUS_PENDING

        await wait_until(finished_without_coordinator, message="the services to finish")

        second = start_coordinator_process(
            stack.cluster, tmp_path / "coordinator", definitions, env=choreography
        )
        await stack.reconnect(f"127.0.0.1:{await asyncio.to_thread(second.port)}")
        try:
            saga = await stack.settled(reply.saga_id, FINAL)
            assert saga.status == status, second.output
            assert saga.failure.step == failed_step
            history = [
                t.kind
                async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=reply.saga_id))
            ]
            assert "saga_resumed" in history
            # Settled once, by whichever of runner and observer learned the last fact.
            assert sum(k in ("saga_completed", "saga_compensated") for k in history) == 1
        finally:
            await stop_process(second)
