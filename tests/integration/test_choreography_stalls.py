"""A choreographed saga never stays stalled: late events settle it, and a start that
never went through is compensated.

Real services and a real coordinator, in-process, on 127.0.0.1; a service is
"down" by being stopped, and comes back on the same port with the same store.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from common.server import start_server
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2, participant_pb2
from services.launcher import spec_of
from services.runtime import DomainService
from tests.coordinator_support import (
    FINAL,
    Stack,
    running_stack,
    write_definitions,
)
from tests.support import Cluster

STALLED = frozenset({pb.SAGA_STATUS_STALLED})


async def restart(cluster: Cluster, name: str) -> None:
    """Start a stopped service again: same port, same store."""
    old = cluster.servers[name].app
    assert isinstance(old, DomainService)
    service = DomainService(spec_of(name), old.settings, old.endpoints)
    cluster.servers[name] = await start_server(service, old.settings)


async def kinds(stack: Stack, saga_id: str) -> list[str]:
    return [t.kind async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=saga_id))]


async def test_late_events_settle_a_stalled_saga(tmp_path: Path) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="1s")
    async with running_stack(
        tmp_path, definitions=definitions, mode="choreography", stall_check_seconds=0.1
    ) as stack:
        await stack.cluster.servers["inventory"].stop()  # nobody reacts to order.created
        reply = await stack.place(wait=False)
        await stack.settled(reply.saga_id, STALLED)
        await restart(stack.cluster, "inventory")  # the events flow again, late
        saga = await stack.settled(reply.saga_id, FINAL)
        history = await kinds(stack, reply.saga_id)
        order = await stack.order(reply.order_id)
    assert saga.status == pb.SAGA_STATUS_COMPLETED
    assert {s.status for s in saga.steps} == {pb.STEP_STATUS_SUCCEEDED}
    assert order.status == order_pb2.ORDER_STATUS_APPROVED
    assert history.count("saga_stalled") == 1
    assert history.index("saga_stalled") < history.index("saga_completed")
    assert history.count("saga_completed") == 1


async def test_a_start_that_never_went_through_is_compensated_with_its_reason(
    tmp_path: Path,
) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="1s")
    async with running_stack(
        tmp_path, definitions=definitions, mode="choreography", stall_check_seconds=0.1
    ) as stack:
        await stack.faults("order", create_order=(-1, 0))  # every attempt fails
        reply = await stack.place(wait=False)
        saga = await stack.settled(reply.saga_id, FINAL)
        history = await kinds(stack, reply.saga_id)
        await stack.faults("order")
        # The compensation went through the barrier: the start, arriving now, is refused.
        late = participant_pb2.StepRequest(
            saga_id=reply.saga_id,
            step="create_order",
            action="create_order",
            payload=saga.data,
            mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.cluster.participant("order").Execute(late, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stack.order(reply.order_id)
    assert saga.status == pb.SAGA_STATUS_COMPENSATED
    assert (saga.failure.step, saga.failure.reason) == ("create_order", "SAGA_DEADLINE_EXCEEDED")
    assert "injected fault" in saga.failure.message
    steps = {s.name: s.status for s in saga.steps}
    assert steps["create_order"] == pb.STEP_STATUS_COMPENSATED
    assert {steps[n] for n in steps if n != "create_order"} == {pb.STEP_STATUS_PENDING}
    assert "saga_stalled" not in history
    assert history[-1] == "saga_compensated"
    assert "saga_compensating" in history
    assert refused.value.code() == grpc.StatusCode.ABORTED
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
