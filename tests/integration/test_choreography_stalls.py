"""A choreographed saga never stays stalled: late events settle it, a start that never
went through is compensated, and RetrySaga takes a stalled saga up again.

Real services and a real coordinator, in-process, on 127.0.0.1; a service is
"down" by being stopped, and comes back on the same port with the same store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from common.server import start_server
from common.store import utc_now
from contract.definitions import load_definitions
from contract.messages import pack
from coordinator.api import requests
from coordinator.app import LOG_FILE
from coordinator.engine.plan import first_intents
from coordinator.log.records import (
    AttemptChange,
    AttemptOutcome,
    Change,
    Kind,
    NewSaga,
    Phase,
    SagaStatus,
    StepStatus,
)
from coordinator.log.sqlite import SqliteSagaLog
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2, participant_pb2
from services.launcher import spec_of
from services.runtime import DomainService
from tests.coordinator_support import (
    FINAL,
    Stack,
    line,
    running_stack,
    start_coordinator,
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


async def test_retry_takes_up_a_stalled_saga_the_services_carry(tmp_path: Path) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="1s")
    async with running_stack(
        tmp_path, definitions=definitions, mode="choreography", stall_check_seconds=0.1
    ) as stack:
        await stack.cluster.servers["inventory"].stop()
        reply = await stack.place(wait=False)
        await stack.settled(reply.saga_id, STALLED)
        retried = await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=reply.saga_id))
        # Nothing for the coordinator to call: it waits for the services again.
        assert retried.status in (pb.SAGA_STATUS_RUNNING, pb.SAGA_STATUS_STALLED)
        await stack.settled(reply.saga_id, STALLED)  # still no event: flagged again
        await restart(stack.cluster, "inventory")
        saga = await stack.settled(reply.saga_id, FINAL)
        history = await kinds(stack, reply.saga_id)
    assert saga.status == pb.SAGA_STATUS_COMPLETED
    assert "saga_retried" in history


def _legacy_saga(definitions: Path, saga_id: str) -> tuple[NewSaga, Sequence[Change]]:
    """A choreographed saga as a coordinator before these fixes could leave it: its
    start never confirmed, flagged stalled (nothing would ever move it again)."""
    definition = load_definitions(definitions, "choreography").sagas["place_order"]
    data, fingerprint = requests.place_order(
        pb.PlaceOrderRequest(customer_id="alice", items=[line("SKU-MUG", 1)], destination="Berlin")
    )
    created = utc_now() - timedelta(minutes=5)
    new = NewSaga(
        saga_id=saga_id,
        definition=definition.name,
        mode=definition.mode.value,
        data=pack(data).SerializeToString(),
        step_names=tuple(s.name for s in definition.steps),
        created_at=created,
        deadline=created + timedelta(seconds=definition.deadline),
        request_hash=fingerprint,
    )
    stalled = Change(
        kind=Kind.SAGA_STALLED,
        at=created + timedelta(seconds=definition.deadline),
        saga_status=SagaStatus.STALLED,
        interrupt_open_attempts=True,
        detail="no outcome observed within the saga's deadline",
    )
    return new, (*first_intents(definition, created), stalled)


async def test_retry_resumes_a_stalled_saga_whose_start_never_went_through(
    tmp_path: Path,
) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml")
    saga_id = "7d0f6c86-2f49-4a8e-9a55-2a0d4f1c0b11"
    legacy = SqliteSagaLog(tmp_path / "coordinator" / LOG_FILE)
    await legacy.open()
    new, then = _legacy_saga(definitions, saga_id)
    await legacy.create(new, then=then)
    await legacy.close()
    async with running_stack(tmp_path, in_process=False) as stack:
        running, app = await start_coordinator(
            stack.cluster, tmp_path / "coordinator", definitions, mode="choreography"
        )
        stack.coordinator, stack.app = running, app
        await stack.reconnect(running.address)
        assert (await stack.saga(saga_id)).status == pb.SAGA_STATUS_STALLED
        retried = await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=saga_id))
        saga = await stack.settled(saga_id, FINAL)
    assert retried.status == pb.SAGA_STATUS_RUNNING
    # Past its deadline, the start was sent again once (its retry budget): it went
    # through, and the services carried the saga to its end.
    assert saga.status == pb.SAGA_STATUS_COMPLETED


async def test_retry_settles_a_stalled_saga_whose_every_step_succeeded(tmp_path: Path) -> None:
    """The aftermath of the restart race, as older coordinators left it in the log."""
    definitions = write_definitions(tmp_path / "sagas.yaml")
    saga_id = "5b1e0c7a-9f3d-4d5e-8f0a-6c2b7e9d1a34"
    legacy = SqliteSagaLog(tmp_path / "coordinator" / LOG_FILE)
    await legacy.open()
    new, then = _legacy_saga(definitions, saga_id)
    at = new.created_at
    succeeded = [
        change
        for name in new.step_names
        for change in (
            Change(
                Kind.STEP_STARTED, at, name, AttemptChange(Phase.EXECUTE, 2), StepStatus.RUNNING
            ),
            Change(
                Kind.STEP_SUCCEEDED,
                at,
                name,
                AttemptChange(Phase.EXECUTE, 2, AttemptOutcome.OK),
                StepStatus.SUCCEEDED,
            ),
        )
    ]
    await legacy.create(new, then=(*then[:-1], *succeeded, then[-1]))
    await legacy.close()
    async with running_stack(tmp_path, in_process=False) as stack:
        running, app = await start_coordinator(
            stack.cluster, tmp_path / "coordinator", definitions, mode="choreography"
        )
        stack.coordinator, stack.app = running, app
        await stack.reconnect(running.address)
        retried = await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=saga_id))
    assert retried.status == pb.SAGA_STATUS_COMPLETED
