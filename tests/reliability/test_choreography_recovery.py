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
from collections.abc import Sequence
from pathlib import Path

import pytest

from common.server import start_server
from coordinator.app import LOG_FILE, CoordinatorApp
from coordinator.engine.crash import CRASH_EXIT_CODE
from coordinator.log.records import Change, Kind, SagaRecord, StepStatus, Transition
from coordinator.log.sqlite import SqliteSagaLog
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2
from tests.coordinator_support import (
    FINAL,
    coordinator_settings,
    endpoints_of,
    kill_process,
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


class RacedLog(SqliteSagaLog):
    """The saga log, with the restart race of one saga forced to happen.

    After a restart the runner re-sends the first step while the observer records the
    events the services published meanwhile. The race: the observer reads the saga
    before the runner logs the first step's success, and writes what it planned (every
    other step succeeded, but not the first: no settlement) after the runner read the
    saga back to settle it (the observer's steps not there yet: no settlement either).
    Here the observer's write that leaves only the first step unconfirmed waits until
    the runner has logged that step and read the saga back; the runner's write waits
    until the observer has planned that write.
    """

    def __init__(self, path: Path, saga_id: str, first_step: str) -> None:
        super().__init__(path, synchronous="NORMAL")
        self.saga_id = saga_id
        self.first_step = first_step
        self.observer_planned = asyncio.Event()
        self.runner_read_back = asyncio.Event()
        self._runner_logged = False

    def _only_first_unconfirmed(self, record: SagaRecord) -> bool:
        return all(
            (s.status is StepStatus.SUCCEEDED) != (s.name == self.first_step) for s in record.steps
        )

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        if saga_id != self.saga_id:
            return await super().append_many(saga_id, changes, planned)
        if planned is not None and self._only_first_unconfirmed(planned):  # the observer's
            self.observer_planned.set()
            await asyncio.wait_for(self.runner_read_back.wait(), 20)
        elif any(c.kind is Kind.STEP_SUCCEEDED and c.step == self.first_step for c in changes):
            await asyncio.wait_for(self.observer_planned.wait(), 20)  # the runner's
            written = await super().append_many(saga_id, changes, planned)
            self._runner_logged = True
            return written
        return await super().append_many(saga_id, changes, planned)

    async def load(self, saga_id: str) -> SagaRecord | None:
        record = await super().load(saga_id)
        task = asyncio.current_task()
        by_runner = task is not None and task.get_name() == f"saga-{saga_id}"
        if saga_id == self.saga_id and self._runner_logged and by_runner:
            self.runner_read_back.set()
        return record


async def test_restart_race_between_the_start_and_the_observer_still_completes_the_saga(
    tmp_path: Path,
) -> None:
    """Regression: every step succeeded at the services, and the saga stayed running
    (then stalled) because runner and observer each settled against a saga without
    the other's last write."""
    definitions = write_definitions(tmp_path / "sagas.yaml")
    async with running_stack(tmp_path, in_process=False) as stack:
        first = start_coordinator_process(
            stack.cluster,
            tmp_path / "coordinator",
            definitions,
            crash_at="after_call:create_order",
            env={"SAGAWIRE_MODE": "choreography"},
        )
        await stack.reconnect(f"127.0.0.1:{await asyncio.to_thread(first.port)}")
        reply = await stack.place("alice", [("SKU-MUG", 1)], "Berlin", wait=False)
        assert await wait_exit(first) == CRASH_EXIT_CODE, first.output

        async def approved() -> bool:
            order = await stack.order(reply.order_id)
            return order.status == order_pb2.ORDER_STATUS_APPROVED

        await wait_until(approved, message="the services to finish the saga")

        data_dir = tmp_path / "coordinator"
        settings = coordinator_settings(data_dir, definitions, mode="choreography")
        raced = RacedLog(data_dir / LOG_FILE, reply.saga_id, "create_order")
        app = CoordinatorApp(settings, endpoints_of(stack.cluster), saga_log=raced)
        stack.coordinator, stack.app = await start_server(app, settings), app
        await stack.reconnect(stack.coordinator.address)

        saga = await stack.settled(reply.saga_id, FINAL, timeout=10)
        assert raced.observer_planned.is_set() and raced.runner_read_back.is_set()
        assert saga.status == pb.SAGA_STATUS_COMPLETED
        assert {s.status for s in saga.steps} == {pb.STEP_STATUS_SUCCEEDED}
        history = [
            t.kind async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=reply.saga_id))
        ]
        assert history.count("saga_completed") == 1


async def test_after_a_restart_the_coordinator_only_observes_a_saga_the_services_undo(
    tmp_path: Path,
) -> None:
    """The services turned the saga back (payment declined) and are undoing it when the
    coordinator is killed; the restarted coordinator must not compensate alongside them."""
    definitions = write_definitions(tmp_path / "sagas.yaml")
    choreography = {"SAGAWIRE_MODE": "choreography"}
    async with running_stack(tmp_path, in_process=False) as stack:
        # The services' way back is slow: the release waits long enough for a restart.
        await stack.faults("inventory", release=(0, 6000))
        first = start_coordinator_process(
            stack.cluster, tmp_path / "coordinator", definitions, env=choreography
        )
        await stack.reconnect(f"127.0.0.1:{await asyncio.to_thread(first.port)}")
        reply = await stack.place("carol", [("SKU-LAMP", 1)], "Berlin", wait=False)
        await stack.settled(reply.saga_id, frozenset({pb.SAGA_STATUS_COMPENSATING}))
        await kill_process(first)

        second = start_coordinator_process(
            stack.cluster, tmp_path / "coordinator", definitions, env=choreography
        )
        await stack.reconnect(f"127.0.0.1:{await asyncio.to_thread(second.port)}")
        try:
            saga = await stack.settled(reply.saga_id, FINAL, timeout=30)
            transitions = [
                t async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=reply.saga_id))
            ]
        finally:
            await stop_process(second)
        released = (await stack.calls("inventory")).get("release", 0)
        cancelled = (await stack.calls("order")).get("cancel_order", 0)
    assert saga.status == pb.SAGA_STATUS_COMPENSATED, second.output
    assert saga.failure.step == "charge_payment"
    # One release and one cancel: the services' reactions; the coordinator sent neither.
    assert (released, cancelled) == (1, 1)
    assert "sagas_resumed=0" in second.output  # nothing for it to drive
    undone = [t for t in transitions if t.kind.startswith("compensation_")]
    assert undone and all(t.detail.startswith("observed ") for t in undone)
