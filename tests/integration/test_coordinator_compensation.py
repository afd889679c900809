"""Rejections, retries, unknown outcomes, deadlines: every failed saga ends compensated, exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from common.grpc_errors import parse_rpc_error
from contract.messages import pack
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import (
    order_pb2,
    order_saga_pb2,
    participant_pb2,
    payment_pb2,
)
from tests.coordinator_support import Stack, running_stack, write_definitions


def attempts(saga: pb.Saga, step: str, phase: str) -> list[pb.Attempt]:
    found = next(s for s in saga.steps if s.name == step)
    return [a for a in found.attempts if a.phase == phase]


def outcomes(saga: pb.Saga, step: str, phase: str = "execute") -> list[str]:
    return [a.outcome for a in attempts(saga, step, phase)]


async def holdings(stack: Stack, customer: str, skus: list[str]) -> object:
    return await stack.balance(customer), [await stack.stock(sku) for sku in skus]


async def assert_nothing_captured(stack: Stack, saga_id: str) -> None:
    charges = await stack.cluster.payment.ListCharges(
        payment_pb2.ListChargesRequest(saga_id=saga_id)
    )
    assert all(c.status == payment_pb2.CHARGE_STATUS_REFUNDED for c in charges.charges)
    assert len(charges.charges) <= 1


@pytest.mark.parametrize(
    ("customer", "items", "to", "step", "reason"),
    [
        ("alice", [("SKU-NOPE", 1)], "Berlin", "create_order", "UNKNOWN_SKU"),
        (
            "alice",
            [("SKU-RARE", 2), ("SKU-MUG", 1)],
            "Berlin",
            "reserve_stock",
            "INSUFFICIENT_STOCK",
        ),
        ("carol", [("SKU-LAMP", 1)], "Berlin", "charge_payment", "INSUFFICIENT_FUNDS"),
        ("alice", [("SKU-LAMP", 3)], "Atlantis", "schedule_shipment", "UNSERVICEABLE_DESTINATION"),
    ],
)
async def test_each_rejection_point_ends_compensated_and_restores_everything(
    tmp_path: Path,
    customer: str,
    items: list[tuple[str, int]],
    to: str,
    step: str,
    reason: str,
) -> None:
    skus = ["SKU-RARE", "SKU-MUG", "SKU-LAMP"]
    async with running_stack(tmp_path) as stack:
        before = await holdings(stack, customer, skus)
        reply = await stack.place(customer=customer, items=items, to=to)
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        assert (reply.failure.step, reply.failure.code, reply.failure.reason) == (
            step,
            "FAILED_PRECONDITION",
            reason,
        )
        assert await holdings(stack, customer, skus) == before
        await assert_nothing_captured(stack, reply.saga_id)
        saga = await stack.saga(reply.saga_id)
        assert outcomes(saga, step) == ["rejected"]
        assert not outcomes(saga, "approve_order")
        if step == "create_order":
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stack.order(reply.order_id)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND
            return
        order = await stack.order(reply.order_id)
        assert order.status == order_pb2.ORDER_STATUS_CANCELLED
        assert order.reason.startswith(f"{step}: {reason}")
        assert outcomes(saga, "create_order", "compensate") == ["ok"]


async def test_transient_failures_are_retried_then_succeed(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.faults("payment", charge=(2, 0))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        saga = await stack.saga(reply.saga_id)
        assert outcomes(saga, "charge_payment") == ["transient", "transient", "ok"]
        assert [a.number for a in attempts(saga, "charge_payment", "execute")] == [1, 2, 3]
        assert attempts(saga, "charge_payment", "execute")[0].error_code == "UNAVAILABLE"
        assert (await stack.calls("payment"))["charge"] == 3


async def test_retry_budget_exhausted_compensates(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        before = await holdings(stack, "alice", ["SKU-MUG"])
        await stack.faults("payment", charge=(-1, 0))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        assert (reply.failure.step, reply.failure.code) == ("charge_payment", "UNAVAILABLE")
        saga = await stack.saga(reply.saga_id)
        charge = next(s for s in saga.steps if s.name == "charge_payment")
        assert charge.status == pb.STEP_STATUS_COMPENSATED
        assert outcomes(saga, "charge_payment") == ["transient"] * 3
        # The outcome was unknown, so it was compensated too (a null compensation).
        assert outcomes(saga, "charge_payment", "compensate") == ["ok"]
        assert await holdings(stack, "alice", ["SKU-MUG"]) == before
        order = await stack.order(reply.order_id)
        assert order.status == order_pb2.ORDER_STATUS_CANCELLED
        assert "UNAVAILABLE" in order.reason


async def test_a_compensation_failing_n_times_then_succeeding(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        before = await holdings(stack, "alice", ["SKU-LAMP"])
        await stack.faults("payment", refund=(3, 0))
        reply = await stack.place(items=[("SKU-LAMP", 1)], to="Atlantis")
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        saga = await stack.saga(reply.saga_id)
        assert outcomes(saga, "charge_payment", "compensate") == ["transient"] * 3 + ["ok"]
        assert await holdings(stack, "alice", ["SKU-LAMP"]) == before


async def test_a_compensation_that_never_succeeds_needs_attention_then_retry_finishes_it(
    tmp_path: Path,
) -> None:
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        compensation_retry={"max_attempts": 4, "initial_backoff": "50ms", "max_backoff": "50ms"},
    )
    async with running_stack(tmp_path, definitions=definitions) as stack:
        before = await holdings(stack, "alice", ["SKU-LAMP"])
        await stack.faults("payment", refund=(-1, 0))
        stuck, other = await asyncio.gather(
            stack.place(items=[("SKU-LAMP", 1)], to="Atlantis"), stack.place(customer="dave")
        )
        assert other.status == pb.SAGA_STATUS_COMPLETED  # not blocked by the stuck one
        assert stuck.status == pb.SAGA_STATUS_NEEDS_ATTENTION
        saga = await stack.saga(stuck.saga_id)
        steps = {s.name: s.status for s in saga.steps}
        assert steps["reserve_stock"] == pb.STEP_STATUS_COMPENSATED  # done beside it
        # The order is undone only after what ran after it: blocked behind the refund.
        assert steps["create_order"] == pb.STEP_STATUS_SUCCEEDED
        assert outcomes(saga, "charge_payment", "compensate") == ["transient"] * 4
        listed = await stack.api.ListSagas(
            pb.ListSagasRequest(status=pb.SAGA_STATUS_NEEDS_ATTENTION)
        )
        assert [s.saga_id for s in listed.sagas] == [stuck.saga_id]

        await stack.faults("payment")  # the fault is gone
        retried = await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=stuck.saga_id))
        assert retried.status == pb.SAGA_STATUS_COMPENSATING
        done = await stack.settled(stuck.saga_id)
        assert done.status == pb.SAGA_STATUS_COMPENSATED
        assert outcomes(done, "charge_payment", "compensate") == ["transient"] * 4 + ["ok"]
        assert await holdings(stack, "alice", ["SKU-LAMP"]) == before
        order = await stack.order(stuck.order_id)
        assert order.status == order_pb2.ORDER_STATUS_CANCELLED
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=stuck.saga_id))
        assert parse_rpc_error(again.value).code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_timed_out_step_is_compensated_and_its_late_execute_refused(
    tmp_path: Path,
) -> None:
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        steps={"charge_payment": {"deadline": "150ms", "retry": {"max_attempts": 2}}},
    )
    async with running_stack(tmp_path, definitions=definitions) as stack:
        before = await holdings(stack, "alice", ["SKU-MUG"])
        await stack.faults("payment", charge=(0, 600))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        assert (reply.failure.step, reply.failure.code) == ("charge_payment", "DEADLINE_EXCEEDED")
        saga = await stack.saga(reply.saga_id)
        assert outcomes(saga, "charge_payment") == ["transient", "transient"]
        assert outcomes(saga, "charge_payment", "compensate") == ["ok"]
        # The execute arriving late (after its compensation) is refused by the barrier.
        await stack.faults("payment")
        data = order_saga_pb2.OrderSagaData()
        saga.data.Unpack(data)
        late = participant_pb2.StepRequest(
            saga_id=reply.saga_id, step="charge_payment", action="charge", payload=pack(data)
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stack.cluster.participant("payment").Execute(late)
        assert refused.value.code() == grpc.StatusCode.ABORTED
        await asyncio.sleep(0.7)  # let the delayed calls of the timed-out attempts run out
        assert await holdings(stack, "alice", ["SKU-MUG"]) == before
        await assert_nothing_captured(stack, reply.saga_id)


async def test_the_saga_deadline_compensates(tmp_path: Path) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="400ms")
    async with running_stack(tmp_path, definitions=definitions) as stack:
        before = await holdings(stack, "alice", ["SKU-MUG"])
        await stack.faults("inventory", reserve=(0, 1500))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        assert reply.failure.reason == "SAGA_DEADLINE_EXCEEDED"
        saga = await stack.saga(reply.saga_id)
        assert outcomes(saga, "reserve_stock") == ["interrupted"]
        assert outcomes(saga, "reserve_stock", "compensate") == ["ok"]
        await stack.faults("inventory")
        assert await holdings(stack, "alice", ["SKU-MUG"]) == before
        order = await stack.order(reply.order_id)
        assert "SAGA_DEADLINE_EXCEEDED" in order.reason


async def test_parallel_steps_overlap_and_compensation_honours_dependencies(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as stack:
        await stack.faults("inventory", reserve=(0, 250), release=(0, 250))
        await stack.faults("payment", charge=(0, 250), refund=(0, 250))
        reply = await stack.place(to="Atlantis")
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        saga = await stack.saga(reply.saga_id)

        def span(step: str, phase: str) -> tuple[float, float]:
            (a,) = attempts(saga, step, phase)
            return a.started_at.ToNanoseconds() / 1e9, a.finished_at.ToNanoseconds() / 1e9

        reserve, charge = span("reserve_stock", "execute"), span("charge_payment", "execute")
        assert reserve[0] < charge[1] and charge[0] < reserve[1]  # they overlapped
        assert span("create_order", "execute")[1] <= min(reserve[0], charge[0])
        assert span("schedule_shipment", "execute")[0] >= max(reserve[1], charge[1])
        release, refund = span("reserve_stock", "compensate"), span("charge_payment", "compensate")
        assert release[0] < refund[1] and refund[0] < release[1]  # undone in parallel too
        assert span("create_order", "compensate")[0] >= max(release[1], refund[1])
