"""Orchestration and choreography: same outcomes, same guarantees, same visibility.

Every scenario runs once per mode through the coordinator's public API with the
same binary; only the configuration (the SAGAWIRE_MODE override) differs. Each test
runs over both event transports too: the services' gRPC streams, and NATS JetStream
(the services' relays and durable consumers, the coordinator's observer on the same
subjects); and on both stores: SQLite files, and PostgreSQL (each service's store in a
schema of its own, the coordinator's saga log in another).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from protos.sagawire.v1 import common_pb2, order_pb2, shipping_pb2
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import Stack, running_stack, write_definitions
from tests.nats_support import TRANSPORTS, Events, events_over
from tests.postgres_support import STORES, StoreChoice, store_on
from tests.support import wait_until

MODES = ("orchestration", "choreography")


@dataclass(frozen=True)
class Scenario:
    name: str
    customer: str
    sku: str
    quantity: int
    to: str
    # What must hold at the end, whatever the mode.
    status: int
    failed_step: str
    reason: str


SCENARIOS = (
    Scenario("complete", "alice", "SKU-BOOK", 2, "Berlin", pb.SAGA_STATUS_COMPLETED, "", ""),
    Scenario(
        "stock rejected",
        "alice",
        "SKU-RARE",
        5,
        "Berlin",
        pb.SAGA_STATUS_COMPENSATED,
        "reserve_stock",
        "INSUFFICIENT_STOCK",
    ),
    Scenario(
        "funds rejected",
        "carol",
        "SKU-LAMP",
        1,
        "Berlin",
        pb.SAGA_STATUS_COMPENSATED,
        "charge_payment",
        "INSUFFICIENT_FUNDS",
    ),
    Scenario(
        "shipping failed",
        "alice",
        "SKU-LAMP",
        1,
        "Atlantis",
        pb.SAGA_STATUS_COMPENSATED,
        "schedule_shipment",
        "UNSERVICEABLE_DESTINATION",
    ),
)


@dataclass(frozen=True)
class FinalState:
    """The business outcome of one saga, as the services' query APIs report it."""

    saga_status: int
    failed_step: str
    reason: str
    order_status: int
    order_reason_prefix: str
    stock_change: tuple[int, int]
    balance_change: int
    shipment: int


async def _final_state(stack: Stack, scenario: Scenario) -> FinalState:
    stock_before = await stack.stock(scenario.sku)
    balance_before = await stack.balance(scenario.customer)
    reply = await stack.place(scenario.customer, [(scenario.sku, scenario.quantity)], scenario.to)
    saga = await stack.saga(reply.saga_id)
    order = await stack.order(reply.order_id)
    stock_after = await stack.stock(scenario.sku)
    try:
        found = await stack.cluster.shipping.GetShipmentBySaga(
            shipping_pb2.GetShipmentBySagaRequest(saga_id=reply.saga_id)
        )
        shipment = found.status
    except Exception:  # no shipment was ever scheduled
        shipment = shipping_pb2.SHIPMENT_STATUS_UNSPECIFIED
    return FinalState(
        saga_status=reply.status,
        failed_step=saga.failure.step,
        reason=saga.failure.reason,
        order_status=order.status,
        order_reason_prefix=order.reason.split(" (")[0],
        stock_change=(stock_after[0] - stock_before[0], stock_after[1] - stock_before[1]),
        balance_change=await stack.balance(scenario.customer) - balance_before,
        shipment=shipment,
    )


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest) -> AsyncIterator[StoreChoice]:
    async with store_on(request.param) as chosen:
        yield chosen


@pytest.fixture(params=TRANSPORTS)
async def events(request: pytest.FixtureRequest) -> AsyncIterator[Events]:
    async with events_over(request.param) as chosen:
        yield chosen


@pytest.fixture
def over(events: Events, store: StoreChoice) -> dict[str, Any]:
    """running_stack's arguments that put the services and the coordinator on ``events``,
    the services' stores and the coordinator's saga log on ``store``."""
    services = {**events.settings(), **store.settings()}
    return {"services": services, **events.settings(), **store.log_settings()}


@pytest.fixture(params=MODES)
async def stack(
    request: pytest.FixtureRequest, tmp_path: Path, over: dict[str, Any]
) -> AsyncIterator[Stack]:
    async with running_stack(
        tmp_path, mode=request.param, stall_check_seconds=0.2, **over
    ) as running:
        yield running


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_every_scenario_ends_in_the_same_final_state_in_both_modes(
    stack: Stack, scenario: Scenario
) -> None:
    state = await _final_state(stack, scenario)
    completed = scenario.status == pb.SAGA_STATUS_COMPLETED
    assert state == FinalState(
        saga_status=scenario.status,
        failed_step=scenario.failed_step,
        reason=scenario.reason,
        order_status=order_pb2.ORDER_STATUS_APPROVED
        if completed
        else order_pb2.ORDER_STATUS_CANCELLED,
        order_reason_prefix=f"{scenario.failed_step}: {scenario.reason}" if not completed else "",
        stock_change=(-scenario.quantity, scenario.quantity) if completed else (0, 0),
        balance_change=state.balance_change if completed else 0,
        shipment=shipping_pb2.SHIPMENT_STATUS_SCHEDULED
        if completed
        else shipping_pb2.SHIPMENT_STATUS_UNSPECIFIED,
    )
    if completed:
        assert state.balance_change < 0  # charged once, the order's total


async def test_a_choreographed_saga_is_as_visible_as_an_orchestrated_one(
    tmp_path: Path, over: dict[str, Any]
) -> None:
    async with running_stack(tmp_path, mode="choreography", **over) as stack:
        reply = await stack.place("carol", [("SKU-LAMP", 1)], "Berlin", wait=False)
        watched = [t async for t in stack.api.WatchSaga(pb.WatchSagaRequest(saga_id=reply.saga_id))]
        saga = await stack.saga(reply.saga_id)

    assert saga.mode == 2  # SAGA_MODE_CHOREOGRAPHY
    assert saga.status == pb.SAGA_STATUS_COMPENSATED
    steps = {s.name: s for s in saga.steps}
    assert [s.name for s in saga.steps] == [
        "create_order",
        "reserve_stock",
        "charge_payment",
        "schedule_shipment",
        "approve_order",
    ]
    assert steps["create_order"].status == pb.STEP_STATUS_COMPENSATED
    assert steps["reserve_stock"].status == pb.STEP_STATUS_COMPENSATED
    assert steps["charge_payment"].status == pb.STEP_STATUS_REJECTED
    assert steps["schedule_shipment"].status == pb.STEP_STATUS_PENDING
    # Reserve and charge run side by side: inventory usually reserved before it heard of
    # the decline (then releases); if the decline came first, the release is a null
    # compensation and the late reserve is refused.
    assert list(steps["reserve_stock"].events) in (
        ["sagawire.inventory.reserved", "sagawire.inventory.released"],
        ["sagawire.inventory.released"],
    )
    assert list(steps["charge_payment"].events) == ["sagawire.payment.declined"]
    charge = steps["charge_payment"].attempts[0]
    assert (charge.outcome, charge.error_reason) == ("rejected", "INSUFFICIENT_FUNDS")
    assert charge.finished_at.ToDatetime() >= charge.started_at.ToDatetime()
    # WatchSaga streamed the same history, in order, to the terminal transition.
    assert [t.sequence for t in watched] == list(range(1, len(watched) + 1))
    assert watched[-1].status == pb.SAGA_STATUS_COMPENSATED
    kinds = [t.kind for t in watched]
    assert kinds.index("step_rejected") < kinds.index("saga_compensating")


async def test_a_choreographed_saga_with_no_progress_is_flagged_stalled(
    tmp_path: Path, over: dict[str, Any]
) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="1s")
    async with running_stack(
        tmp_path,
        definitions=definitions,
        mode="choreography",
        stall_check_seconds=0.1,
        **over,
    ) as stack:
        await stack.cluster.servers["inventory"].stop()  # nobody reacts to order.created
        reply = await stack.place(wait=False)
        stalled = await stack.settled(reply.saga_id, frozenset({pb.SAGA_STATUS_STALLED}))
        listed = await stack.api.ListSagas(pb.ListSagasRequest(status=pb.SAGA_STATUS_STALLED))
    assert stalled.steps[0].status == pb.STEP_STATUS_SUCCEEDED
    assert [s.saga_id for s in listed.sagas] == [reply.saga_id]


async def test_orchestrated_and_choreographed_sagas_side_by_side(
    tmp_path: Path, over: dict[str, Any]
) -> None:
    """Two definitions of different modes on one stack: each right, nothing done twice."""
    path = write_definitions(tmp_path / "sagas.yaml")
    raw = yaml.safe_load(path.read_text())
    twin = dict(raw["sagas"]["place_order"], mode="choreography")
    raw["sagas"]["place_order_choreographed"] = twin
    path.write_text(yaml.safe_dump(raw))
    async with running_stack(tmp_path, definitions=path, **over) as stack:
        before = await stack.stock("SKU-MUG")
        balance = await stack.balance("dave")
        sagas = ["place_order", "place_order_choreographed"] * 5
        replies = await asyncio.gather(
            *(stack.api.PlaceOrder(_order_request("dave", saga), timeout=30) for saga in sagas)
        )
        modes = [(await stack.saga(r.saga_id)).mode for r in replies]
        after = await stack.stock("SKU-MUG")
        spent = balance - await stack.balance("dave")
        totals = [(await stack.order(r.order_id)).total.amount_minor for r in replies]

    assert all(r.status == pb.SAGA_STATUS_COMPLETED for r in replies)
    assert modes == [1, 2] * 5
    assert (before[0] - after[0], after[1] - before[1]) == (10, 10)  # one unit each, once
    assert spent == sum(totals)


def _order_request(customer: str, saga: str) -> pb.PlaceOrderRequest:
    return pb.PlaceOrderRequest(
        customer_id=customer,
        items=[common_pb2.LineItem(sku="SKU-MUG", quantity=1)],
        destination="Berlin",
        wait=True,
        saga=saga,
    )


async def test_waiting_for_an_outcome_works_in_choreography(
    tmp_path: Path, over: dict[str, Any]
) -> None:
    async with running_stack(tmp_path, mode="choreography", **over) as stack:
        reply = await stack.place("alice", [("SKU-MUG", 1)], "Berlin", wait=True)
        assert reply.status == pb.SAGA_STATUS_COMPLETED

        async def approved() -> bool:
            return (await stack.order(reply.order_id)).status == order_pb2.ORDER_STATUS_APPROVED

        assert await wait_until(approved, message="the order to be approved")
