"""Circuit breakers, forward recovery past the pivot, and runs driven again after an
unexpected error, with real services."""

from __future__ import annotations

import copy
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from common.server import start_server
from coordinator.app import CoordinatorApp
from coordinator.log.records import Change, Kind, NewSaga, SagaRecord, Transition
from coordinator.log.sqlite import SqliteSagaLog
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2, order_saga_pb2, shipping_pb2
from tests.coordinator_support import (
    FINAL,
    Stack,
    coordinator_settings,
    endpoints_of,
    line,
    running_stack,
    write_definitions,
)
from tests.support import start_cluster, wait_until


def outcomes(saga: pb.Saga, step: str, phase: str = "execute") -> list[str]:
    found = next(s for s in saga.steps if s.name == step)
    return [a.outcome for a in found.attempts if a.phase == phase]


async def breaker(stub: object, participant: str) -> pb.Breaker:
    reply = await stub.ListBreakers(pb.ListBreakersRequest())  # type: ignore[attr-defined]
    found: pb.Breaker = next(b for b in reply.breakers if b.participant == participant)
    return found


async def test_an_open_breaker_costs_time_never_attempts(tmp_path: Path) -> None:
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        retry={"max_attempts": 5},
        compensation_retry={"max_attempts": 2},
    )
    async with running_stack(
        tmp_path,
        definitions=definitions,
        breaker_minimum_calls=3,
        breaker_failure_rate=0.5,
        breaker_reset_timeout=0.3,
    ) as stack:
        stock = await stack.stock("SKU-MUG")
        await stack.faults("inventory", reserve=(-1, 0))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        assert reply.failure.step == "reserve_stock"
        saga = await stack.saga(reply.saga_id)
        # Three failures open the breaker; the remaining attempts wait for it and are
        # its trial calls: five real calls, none refused by the breaker.
        assert outcomes(saga, "reserve_stock") == ["transient"] * 5
        calls = await stack.calls("inventory")
        assert calls["reserve"] == 5
        # The release waits out the open breaker and goes through as the trial: one
        # attempt of a budget of two.
        assert outcomes(saga, "reserve_stock", "compensate") == ["ok"]
        assert calls["release"] == 1
        inventory = await breaker(stack.api, "inventory")
        assert (inventory.state, inventory.failure_count, inventory.waiting_for_breaker) == (
            "closed",
            0,
            0,
        )
        transitions = [(t.from_state, t.to_state) for t in inventory.transitions]
        assert transitions[0] == ("closed", "open")
        assert transitions[-2:] == [("open", "half-open"), ("half-open", "closed")]
        assert set(transitions[1:-2]) <= {("open", "half-open"), ("half-open", "open")}
        assert (
            inventory.minimum_calls,
            inventory.failure_rate_threshold,
            inventory.reset_timeout_seconds,
        ) == (3, 0.5, 0.3)
        assert await stack.stock("SKU-MUG") == stock
        await stack.faults("inventory")
        assert (await stack.place()).status == pb.SAGA_STATUS_COMPLETED


async def test_new_sagas_are_refused_at_the_door_while_the_first_breaker_is_open(
    tmp_path: Path,
) -> None:
    async def order_breaker_open() -> bool:
        return (await breaker(stack.api, "order")).state == "open"

    async def placed_late() -> pb.PlaceOrderResponse | None:
        try:
            return await stack.place(key="door-late")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            return None

    async with running_stack(tmp_path, breaker_minimum_calls=3, breaker_reset_timeout=2.0) as stack:
        await stack.faults("order", create_order=(-1, 0))
        for i in range(2):
            await stack.place(wait=False, key=f"door-{i}")
        await wait_until(order_breaker_open, message="order's breaker open")
        before = await stack.api.ListSagas(pb.ListSagasRequest())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.place(key="door-late")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "circuit breaker open" in (refused.value.details() or "")
        after = await stack.api.ListSagas(pb.ListSagasRequest())
        assert len(after.sagas) == len(before.sagas)  # nothing was written
        # A retry of a saga its key already started is answered at the shut door: the
        # same saga, nothing new (a client whose first answer was lost is not refused).
        retried = await stack.place(wait=False, key="door-0")
        assert retried.existing and retried.saga_id in {s.saga_id for s in before.sagas}
        assert len((await stack.api.ListSagas(pb.ListSagasRequest())).sagas) == len(before.sagas)
        # The client retries with the same key once order is back: the saga, once.
        await stack.faults("order")
        late = await wait_until(placed_late, timeout=20, message="the late order accepted")
        assert late.status == pb.SAGA_STATUS_COMPLETED
        again = await stack.place(key="door-late")
        assert (again.saga_id, again.existing) == (late.saga_id, True)

        # The sagas that met the open breaker waited for it and completed too.
        async def all_completed() -> bool:
            listed = await stack.api.ListSagas(pb.ListSagasRequest())
            return len(listed.sagas) == 3 and all(
                s.status == pb.SAGA_STATUS_COMPLETED for s in listed.sagas
            )

        await wait_until(all_completed, timeout=20, message="every saga completed")


async def test_business_rejections_do_not_trip_the_breaker(tmp_path: Path) -> None:
    async with running_stack(
        tmp_path, breaker_minimum_calls=2, breaker_reset_timeout=30.0
    ) as stack:
        for _ in range(4):
            reply = await stack.place(customer="carol", items=[("SKU-LAMP", 1)])
            assert reply.failure.reason == "INSUFFICIENT_FUNDS"
        payment = await breaker(stack.api, "payment")
        assert (payment.state, payment.failure_count, list(payment.transitions)) == (
            "closed",
            0,
            [],
        )
        assert (await stack.calls("payment"))["charge"] == 4


async def test_after_the_pivot_failures_are_retried_forward_never_compensated(
    tmp_path: Path,
) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", retry={"max_attempts": 2})
    async with running_stack(tmp_path, definitions=definitions) as stack:
        await stack.faults("order", approve_order=(4, 0))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        saga = await stack.saga(reply.saga_id)
        # More attempts than max_attempts: past the pivot a step is retried until it succeeds.
        assert outcomes(saga, "approve_order") == ["transient"] * 4 + ["ok"]
        assert not any(a.phase == "compensate" for s in saga.steps for a in s.attempts)
        order = await stack.order(reply.order_id)
        assert order.status == order_pb2.ORDER_STATUS_APPROVED


async def test_past_the_pivot_the_saga_deadline_no_longer_compensates(tmp_path: Path) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="1s")
    async with running_stack(tmp_path, definitions=definitions) as stack:
        await stack.faults("order", approve_order=(0, 1500))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        saga = await stack.saga(reply.saga_id)
        assert saga.finished_at.ToDatetime() > saga.deadline.ToDatetime()
        shipment = await stack.cluster.shipping.GetShipmentBySaga(
            shipping_pb2.GetShipmentBySagaRequest(saga_id=reply.saga_id)
        )
        assert shipment.status == shipping_pb2.SHIPMENT_STATUS_SCHEDULED


class _DiskFull(SqliteSagaLog):
    """The coordinator's real log, except that writing ``step``'s result fails, as a full
    disk would, the next ``times`` times: each run that tries stops with an unexpected
    error."""

    def __init__(self, path: Path, step: str, times: int) -> None:
        super().__init__(path, synchronous="NORMAL")
        self._step = step
        self.times = times
        self.failed = 0

    def _maybe_fail(self, changes: Sequence[Change]) -> None:
        if self.failed < self.times and any(
            c.step == self._step and c.kind is Kind.STEP_SUCCEEDED for c in changes
        ):
            self.failed += 1
            raise sqlite3.OperationalError("database or disk is full")

    async def append(self, saga_id: str, change: Change) -> Transition:
        self._maybe_fail([change])
        return await super().append(saga_id, change)

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        self._maybe_fail(changes)
        return await super().append_many(saga_id, changes, planned)

    async def append_later(self, saga_id: str, changes: Sequence[Change]) -> None:
        # An orchestrated step's result is written later; a failure there stops the run
        # at the saga's next write (tests/unit/test_saga_log.py), here at once.
        self._maybe_fail(changes)
        await super().append_later(saga_id, changes)


@asynccontextmanager
async def stack_on(
    tmp_path: Path, saga_log: SqliteSagaLog, **settings: Any
) -> AsyncIterator[Stack]:
    """The services and an in-process coordinator that writes to ``saga_log``."""
    definitions = write_definitions(tmp_path / "sagas.yaml")
    cluster = await start_cluster(tmp_path / "services")
    config = coordinator_settings(tmp_path / "coordinator", definitions, **settings)
    app = CoordinatorApp(config, endpoints_of(cluster), saga_log=saga_log)
    stack = Stack(cluster, address="")
    try:
        stack.coordinator, stack.app = await start_server(app, config), app
        stack.address = stack.coordinator.address
        yield stack
    finally:
        await stack.stop_coordinator()
        await cluster.stop()


async def charged_once(stack: Stack, saga: pb.Saga, balance_before: int) -> bool:
    data = order_saga_pb2.OrderSagaData()
    assert saga.data.Unpack(data)
    return balance_before - await stack.balance("alice") == data.total.amount_minor > 0


async def test_a_run_stopped_by_an_unexpected_error_is_driven_again_from_the_log(
    tmp_path: Path,
) -> None:
    saga_log = _DiskFull(tmp_path / "coordinator" / "coordinator.db", "charge_payment", times=1)
    async with stack_on(tmp_path, saga_log) as stack:
        balance = await stack.balance("alice")
        reply = await stack.place(wait=False)
        # The charge went through, its result was not logged, and the run stopped; without
        # a re-drive the saga would stay running until the coordinator restarts.
        saga = await stack.settled(reply.saga_id, timeout=20)
        assert saga_log.failed == 1
        assert saga.status == pb.SAGA_STATUS_COMPLETED
        resumed = [t for t in await saga_log.history(reply.saga_id) if t.kind is Kind.SAGA_RESUMED]
        assert [t.detail for t in resumed] == [
            "resumed after an unexpected error stopped its last run"
        ]
        # The charge was sent twice with one key; the barrier applied it once.
        assert outcomes(saga, "charge_payment") == ["interrupted", "ok"]
        assert (await stack.calls("payment"))["charge"] == 2
        assert await charged_once(stack, saga, balance)


async def test_a_saga_whose_runs_keep_failing_needs_attention_and_can_be_retried(
    tmp_path: Path,
) -> None:
    saga_log = _DiskFull(tmp_path / "coordinator" / "coordinator.db", "charge_payment", times=99)
    async with stack_on(tmp_path, saga_log, redrive_first_wait=0.05, redrive_attempts=3) as stack:
        balance = await stack.balance("alice")
        reply = await stack.place(wait=False)
        stuck = await stack.settled(reply.saga_id, timeout=20)
        assert stuck.status == pb.SAGA_STATUS_NEEDS_ATTENTION
        assert saga_log.failed == 3  # the first run and two re-drives, then no more
        last = (await saga_log.history(reply.saga_id))[-1]
        assert last.detail.startswith(
            "3 runs in a row stopped by an unexpected error: OperationalError: database or"
        )
        listed = await stack.api.ListSagas(
            pb.ListSagasRequest(status=pb.SAGA_STATUS_NEEDS_ATTENTION)
        )
        assert [s.saga_id for s in listed.sagas] == [reply.saga_id]
        # The disk is fixed; an operator retries the saga and it completes, charged once.
        saga_log.times = 0
        await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=reply.saga_id))
        saga = await stack.settled(reply.saga_id, FINAL, timeout=20)
        assert saga.status == pb.SAGA_STATUS_COMPLETED
        assert await charged_once(stack, saga, balance)


async def test_recovery_leaves_a_saga_of_an_unloaded_definition_unfinished_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    saga_id, now = str(uuid.uuid4()), datetime.now(UTC)
    retired = SqliteSagaLog(tmp_path / "coordinator" / "coordinator.db", synchronous="NORMAL")
    await retired.open()
    await retired.create(
        NewSaga(
            saga_id=saga_id,
            definition="retired_saga",  # a definition the coordinator no longer loads
            mode="orchestration",
            data=b"",
            step_names=("only_step",),
            created_at=now,
            deadline=now + timedelta(seconds=30),
        )
    )
    await retired.close()
    caplog.set_level(logging.ERROR, logger="coordinator.engine.scheduler")
    async with running_stack(tmp_path) as stack:
        saga = await stack.saga(saga_id)
        assert saga.status == pb.SAGA_STATUS_RUNNING
        # The coordinator serves the sagas it can drive.
        assert (await stack.place()).status == pb.SAGA_STATUS_COMPLETED
    assert f"its definition is not loaded saga_id={saga_id} definition=retired_saga" in caplog.text
    assert "unexpected error" not in caplog.text


async def test_a_slow_participant_holds_only_its_own_bulkhead(tmp_path: Path) -> None:
    # Two saga types: place_order needs shipping, reserve_and_charge does not.
    path = write_definitions(tmp_path / "sagas.yaml", step_deadline="5s")
    raw = yaml.safe_load(path.read_text())
    no_shipping = copy.deepcopy(raw["sagas"]["place_order"])
    no_shipping["steps"] = [s for s in no_shipping["steps"] if s["participant"] != "shipping"]
    no_shipping["steps"][-1]["after"] = ["reserve_stock", "charge_payment"]
    raw["sagas"]["reserve_and_charge"] = no_shipping
    path.write_text(yaml.safe_dump(raw))
    async with running_stack(tmp_path, definitions=path, bulkheads={"shipping": 2}) as stack:
        await stack.faults("shipping", schedule=(0, 2000))  # every schedule takes 2 s
        slow = [(await stack.place(wait=False)).saga_id for _ in range(6)]

        async def shipping_full() -> pb.Breaker | None:
            found = await breaker(stack.api, "shipping")
            return found if found.in_flight == 2 and found.waiting_for_bulkhead > 0 else None

        full = await wait_until(shipping_full, timeout=15, message="shipping's bulkhead full")
        assert full.bulkhead_limit == 2
        request = pb.PlaceOrderRequest(
            saga="reserve_and_charge",
            customer_id="alice",
            items=[line("SKU-MUG", 1)],
            destination="Berlin",
            wait=True,
        )
        other = await stack.api.PlaceOrder(request, timeout=30)
        assert other.status == pb.SAGA_STATUS_COMPLETED
        # It completed while place_order sagas still queued behind shipping's two slots.
        shipping = await breaker(stack.api, "shipping")
        assert shipping.in_flight <= 2 and shipping.waiting_for_bulkhead > 0
        running = [s for s in slow if (await stack.saga(s)).status not in FINAL]
        assert len(running) >= 3
        assert stack.app is not None
        assert stack.app.bulkheads.peak("shipping") == 2
        await stack.faults("shipping")
