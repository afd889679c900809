"""Every effect is bound to its saga: the barrier's fingerprint, compensations and
approvals acting on what the service recorded, and choreography entered only at its start.

These tests play a caller that *can* reach the participants as the coordinator does
(it holds the coordinator's certificate, or the stack runs plaintext by name): mutual
TLS and the per-method table are what refuse everyone else. What is checked here is
the second line, which holds even then:

- a request sent first under a saga's key with a different payload is never taken for
  the real one: the coordinator's call is refused (REQUEST_MISMATCH), the saga never
  completes at the wrong price, and it unwinds (in choreography too);
- a compensate sent first with a made-up payload does not kill the saga;
- a compensation or approval naming another saga's order does not touch it;
- nobody enters a choreographed chain halfway, and a stack running orchestration
  reacts to no event at all.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from common.config import ServiceSettings
from contract.messages import pack
from protos.sagawire.v1 import (
    common_pb2,
    order_pb2,
    order_saga_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)
from protos.sagawire.v1 import coordinator_pb2 as pb
from services.launcher import spec_of
from services.runtime import DomainService
from tests.coordinator_support import Stack, running_stack
from tests.integration.steps import (
    compensate,
    execute,
    failure,
    order_data,
    step_request,
    with_action,
)
from tests.support import Cluster, listing

ORCHESTRATION = participant_pb2.SAGA_MODE_ORCHESTRATION
CHOREOGRAPHY = participant_pb2.SAGA_MODE_CHOREOGRAPHY
MUG = 800  # SKU-MUG's price in the seed, in cents
# Long enough for the test's own call to arrive first, with room to spare.
SLOW_START_MS = 800


def forged_charge(
    saga_id: str, order_id: str, mode: participant_pb2.SagaMode.ValueType
) -> participant_pb2.StepRequest:
    """payment.Execute for the saga's charge step, at one cent."""
    data = order_saga_pb2.OrderSagaData(
        order_id=order_id,
        customer_id="alice",
        destination="Berlin",
        items=[common_pb2.LineItem(sku="SKU-MUG", quantity=1)],
        total=common_pb2.Money(amount_minor=1, currency="EUR"),
    )
    return participant_pb2.StepRequest(
        saga_id=saga_id, step="charge_payment", action="charge", payload=pack(data), mode=mode
    )


async def charges(stack: Stack, saga_id: str) -> list[tuple[int, int]]:
    listed = await stack.cluster.payment.ListCharges(
        payment_pb2.ListChargesRequest(saga_id=saga_id)
    )
    return [(c.amount.amount_minor, c.status) for c in listed.charges]


async def shipments(stack: Stack, saga_id: str) -> int:
    listed = await listing(
        stack.cluster.shipping.ListShipments, shipping_pb2.ListShipmentsRequest(), "shipments"
    )
    return sum(1 for s in listed if s.saga_id == saga_id)


@pytest.mark.parametrize("mode", ["orchestration", "choreography"])
async def test_a_charge_sent_first_under_the_sagas_key_never_passes_for_the_real_one(
    tmp_path: Path, mode: str
) -> None:
    async with running_stack(tmp_path, mode=mode) as stack:
        balance, stock = await stack.balance("alice"), await stack.stock("SKU-MUG")
        await stack.faults("order", create_order=(0, SLOW_START_MS))
        placed = await stack.place(items=[("SKU-MUG", 1)], wait=False)
        # Recorded: a request from whoever holds the coordinator's certificate is taken.
        forged = forged_charge(placed.saga_id, placed.order_id, ORCHESTRATION)
        await stack.cluster.participant("payment").Execute(forged)

        saga = await stack.settled(placed.saga_id)
        assert saga.status == pb.SAGA_STATUS_COMPENSATED
        assert (saga.failure.step, saga.failure.reason) == ("charge_payment", "REQUEST_MISMATCH")
        order = await stack.order(placed.order_id)
        assert order.status == order_pb2.ORDER_STATUS_CANCELLED
        assert "REQUEST_MISMATCH" in order.reason
        # The order's price was never charged, nothing shipped, the stock is back; the
        # forged cent stands as the forged call made it (only mTLS keeps that call out).
        assert await charges(stack, placed.saga_id) == [(1, payment_pb2.CHARGE_STATUS_CAPTURED)]
        assert await stack.balance("alice") == balance - 1
        assert await shipments(stack, placed.saga_id) == 0
        assert await stack.stock("SKU-MUG") == stock


async def test_a_compensate_sent_first_with_a_made_up_request_does_not_kill_the_saga(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.faults("order", create_order=(0, SLOW_START_MS))
        placed = await stack.place(items=[("SKU-MUG", 1)], wait=False)
        made_up = step_request("release", order_data(), placed.saga_id, "reserve_stock")
        reply = await compensate(stack.cluster, "inventory", made_up)
        assert reply.outcome == participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION

        saga = await stack.settled(placed.saga_id)
        assert saga.status == pb.SAGA_STATUS_COMPLETED
        order = await stack.order(placed.order_id)
        assert order.status == order_pb2.ORDER_STATUS_APPROVED
        assert await charges(stack, placed.saga_id) == [(MUG, payment_pb2.CHARGE_STATUS_CAPTURED)]


async def test_cancel_and_approve_act_only_on_the_order_their_saga_created(
    cluster: Cluster,
) -> None:
    first, second = order_data(), order_data()
    create_first = step_request("create_order", first)
    create_second = step_request("create_order", second)
    await execute(cluster, "order", create_first)
    await execute(cluster, "order", create_second)

    # The second saga's compensation, naming the first saga's order.
    naming_first = order_saga_pb2.OrderSagaData()
    naming_first.CopyFrom(second)
    naming_first.order_id = first.order_id
    cancel = with_action(create_second, "cancel_order")
    cancel.payload.Pack(naming_first)
    refused = await failure(compensate(cluster, "order", cancel))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "REQUEST_MISMATCH",
    )
    # Its approval, naming the first saga's order.
    approve = step_request("approve_order", naming_first, create_second.saga_id)
    refused = await failure(execute(cluster, "order", approve))
    assert refused.reason == "REQUEST_MISMATCH"
    # A saga that created nothing, naming the first saga's order: a null compensation.
    stranger = step_request("cancel_order", first, step="create_order")
    reply = await compensate(cluster, "order", stranger)
    assert reply.outcome == participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION

    for data in (first, second):
        found = await cluster.order.GetOrder(order_pb2.GetOrderRequest(order_id=data.order_id))
        assert found.status == order_pb2.ORDER_STATUS_PENDING


@pytest.mark.parametrize(
    ("service", "action"),
    [("inventory", "reserve"), ("payment", "charge"), ("shipping", "schedule")],
)
async def test_nobody_enters_a_choreographed_chain_halfway(
    cluster: Cluster, service: str, action: str
) -> None:
    halfway = step_request(action, order_data())
    halfway.mode = CHOREOGRAPHY
    refused = await failure(execute(cluster, service, halfway))
    assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, "mode")
    # Refused before the barrier: the coordinator's own call, orchestrated, still runs.
    halfway.mode = ORCHESTRATION
    reply = await execute(cluster, service, halfway)
    assert reply.outcome == participant_pb2.BARRIER_OUTCOME_APPLIED


async def test_the_first_step_of_a_choreography_may_be_called(cluster: Cluster) -> None:
    start = step_request("create_order", order_data(), step="create_order")
    start.mode = CHOREOGRAPHY
    assert (await execute(cluster, "order", start)).outcome == (
        participant_pb2.BARRIER_OUTCOME_APPLIED
    )


@pytest.mark.parametrize(("mode", "reacts"), [("orchestration", False), ("", True)])
def test_a_stack_running_orchestration_reacts_to_no_event(
    tmp_path: Path, mode: str, reacts: bool
) -> None:
    settings = ServiceSettings(data_dir=tmp_path, mode=mode)  # type: ignore[arg-type]
    service = DomainService(spec_of("inventory"), settings)
    assert bool(service.consumers) is reacts
