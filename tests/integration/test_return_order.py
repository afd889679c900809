"""The second saga type, return_order, end to end in both modes, on real servers.

A completed order is returned: the order service accepts the return (an approved order,
once, the customer's own), payment refunds the order's charge, inventory puts the units
back, the order is closed as returned. The definition (contract/sagas.yaml) is all
that makes it a saga: the coordinator's runner runs it in orchestration, the services'
reactions in choreography, with no code of its own in either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.grpc_errors import parse_rpc_error
from common.tokens import Role
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import (
    inventory_pb2,
    order_pb2,
    order_saga_pb2,
    participant_pb2,
    payment_pb2,
)
from tests.coordinator_support import Stack, api_token, running_stack
from tests.integration.steps import execute, step_request

MODES = ("orchestration", "choreography")
MODE_NUMBERS = {
    "orchestration": participant_pb2.SAGA_MODE_ORCHESTRATION,
    "choreography": participant_pb2.SAGA_MODE_CHOREOGRAPHY,
}


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def stack(mode: str, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path, mode=mode, stall_check_seconds=0.2) as running:
        yield running


async def _charge(stack: Stack, saga_id: str) -> payment_pb2.Charge:
    charges = await stack.cluster.payment.ListCharges(
        payment_pb2.ListChargesRequest(saga_id=saga_id)
    )
    (charge,) = charges.charges
    return charge


async def test_a_completed_order_is_refunded_restocked_and_closed(stack: Stack, mode: str) -> None:
    placed = await stack.place("alice", [("SKU-BOOK", 2)], "Berlin")
    assert placed.status == pb.SAGA_STATUS_COMPLETED
    balance, stock = await stack.balance("alice"), await stack.stock("SKU-BOOK")
    total = (await stack.order(placed.order_id)).total.amount_minor

    returned = await stack.return_order(placed.order_id, "alice")

    assert returned.status == pb.SAGA_STATUS_COMPLETED, returned.failure
    saga = await stack.saga(returned.saga_id)
    assert saga.saga == "return_order"
    assert saga.mode == MODE_NUMBERS[mode]
    assert [s.name for s in saga.steps] == [
        "accept_return",
        "refund_payment",
        "restock_items",
        "close_return",
    ]
    assert {s.status for s in saga.steps} == {pb.STEP_STATUS_SUCCEEDED}
    order = await stack.order(placed.order_id)
    assert order.status == order_pb2.ORDER_STATUS_RETURNED
    assert await stack.balance("alice") == balance + total
    assert await stack.stock("SKU-BOOK") == (stock[0] + 2, stock[1] - 2)
    assert (await _charge(stack, placed.saga_id)).status == payment_pb2.CHARGE_STATUS_REFUNDED
    reservation = await stack.cluster.inventory.GetReservation(
        inventory_pb2.GetReservationRequest(saga_id=placed.saga_id)
    )
    assert reservation.status == inventory_pb2.RESERVATION_STATUS_RELEASED


async def test_an_order_is_returned_once(stack: Stack) -> None:
    placed = await stack.place("alice", [("SKU-MUG", 1)], "Berlin")
    first = await stack.return_order(placed.order_id, "alice")
    assert first.status == pb.SAGA_STATUS_COMPLETED
    balance, stock = await stack.balance("alice"), await stack.stock("SKU-MUG")

    again = await stack.return_order(placed.order_id, "alice")

    assert again.status == pb.SAGA_STATUS_COMPENSATED
    assert (again.failure.step, again.failure.code, again.failure.reason) == (
        "accept_return",
        "FAILED_PRECONDITION",
        "ALREADY_RETURNED",
    )
    assert await stack.balance("alice") == balance  # no second refund
    assert await stack.stock("SKU-MUG") == stock  # no second restock
    saga = await stack.saga(again.saga_id)
    assert [s.status for s in saga.steps][1:] == [pb.STEP_STATUS_PENDING] * 3


async def test_only_an_approved_order_can_be_returned(stack: Stack) -> None:
    declined = await stack.place("carol", [("SKU-LAMP", 1)], "Berlin")  # cannot pay
    assert declined.status == pb.SAGA_STATUS_COMPENSATED

    refused = await stack.return_order(declined.order_id, "carol")

    assert refused.status == pb.SAGA_STATUS_COMPENSATED
    assert (refused.failure.code, refused.failure.reason) == (
        "FAILED_PRECONDITION",
        "ORDER_NOT_RETURNABLE",
    )
    assert (await stack.order(declined.order_id)).status == order_pb2.ORDER_STATUS_CANCELLED


async def test_a_customer_returns_only_its_own_orders(stack: Stack) -> None:
    placed = await stack.place("alice", [("SKU-MUG", 1)], "Berlin")
    as_dave = stack.api_as(api_token(Role.CUSTOMER, "dave"))

    # Naming another customer: refused at the door, nothing started.
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await as_dave.ReturnOrder(
            pb.ReturnOrderRequest(order_id=placed.order_id, customer_id="alice", wait=True)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # As itself, with alice's order: the order service answers as for an unknown order.
    reply = await as_dave.ReturnOrder(
        pb.ReturnOrderRequest(order_id=placed.order_id, customer_id="dave", wait=True),
        timeout=30,
    )
    assert reply.status == pb.SAGA_STATUS_COMPENSATED
    assert reply.failure.reason == "ORDER_NOT_FOUND"
    assert (await stack.order(placed.order_id)).status == order_pb2.ORDER_STATUS_APPROVED
    # Its own saga it may read; alice's return it may not.
    assert (await as_dave.GetSaga(pb.GetSagaRequest(saga_id=reply.saga_id))).saga_id
    mine = await stack.return_order(placed.order_id, "alice")
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await as_dave.GetSaga(pb.GetSagaRequest(saga_id=mine.saga_id))
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_same_key_is_the_same_return(stack: Stack) -> None:
    placed = await stack.place("alice", [("SKU-MUG", 1)], "Berlin")
    first = await stack.return_order(placed.order_id, "alice", key="return-1")
    again = await stack.return_order(placed.order_id, "alice", key="return-1")
    assert (again.saga_id, again.existing, again.status) == (
        first.saga_id,
        True,
        pb.SAGA_STATUS_COMPLETED,
    )


async def test_a_refund_that_cannot_be_confirmed_withdraws_the_return(tmp_path: Path) -> None:
    """Orchestration: the refund (the pivot) fails until its retries run out, its outcome
    unknown; the saga revokes it (a null compensation: it never took effect) and withdraws
    the return, and the order can be returned later."""
    async with running_stack(tmp_path, mode="orchestration") as stack:
        placed = await stack.place("alice", [("SKU-MUG", 1)], "Berlin")
        balance = await stack.balance("alice")
        await stack.faults("payment", refund_return=(-1, 0))
        failed = await stack.return_order(placed.order_id, "alice")
        await stack.faults("payment")
        assert failed.status == pb.SAGA_STATUS_COMPENSATED
        assert failed.failure.step == "refund_payment"
        steps = {s.name: s.status for s in (await stack.saga(failed.saga_id)).steps}
        assert steps["accept_return"] == pb.STEP_STATUS_COMPENSATED
        assert await stack.balance("alice") == balance
        assert (await stack.order(placed.order_id)).status == order_pb2.ORDER_STATUS_APPROVED

        later = await stack.return_order(placed.order_id, "alice")
        assert later.status == pb.SAGA_STATUS_COMPLETED
        assert (await stack.order(placed.order_id)).status == order_pb2.ORDER_STATUS_RETURNED


async def test_a_second_acceptance_step_in_one_saga_is_refused(tmp_path: Path) -> None:
    """The barrier keys on (saga, step): the same action under another step name would
    accept a second return for the saga; the order service refuses it, nothing done."""
    async with running_stack(tmp_path) as stack:
        placed = await stack.place("alice", [("SKU-MUG", 1)], "Berlin")
        data = order_saga_pb2.OrderSagaData(order_id=placed.order_id, customer_id="alice")
        first = step_request("accept_return", data, step="accept_return")
        await execute(stack.cluster, "order", first)
        again = step_request("accept_return", data, saga_id=first.saga_id, step="again")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await execute(stack.cluster, "order", again)
        refused = parse_rpc_error(caught.value)
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "REQUEST_MISMATCH",
        )
        assert "from another step" in refused.message
