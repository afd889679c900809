"""Circuit breakers and forward recovery past the pivot, with real services."""

from __future__ import annotations

from pathlib import Path

from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2, shipping_pb2
from tests.coordinator_support import running_stack, write_definitions


def outcomes(saga: pb.Saga, step: str, phase: str = "execute") -> list[str]:
    found = next(s for s in saga.steps if s.name == step)
    return [a.outcome for a in found.attempts if a.phase == phase]


async def breaker(stub: object, participant: str) -> pb.Breaker:
    reply = await stub.ListBreakers(pb.ListBreakersRequest())  # type: ignore[attr-defined]
    found: pb.Breaker = next(b for b in reply.breakers if b.participant == participant)
    return found


async def test_breaker_opens_fails_fast_half_opens_and_closes(tmp_path: Path) -> None:
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        retry={"max_attempts": 5},
        compensation_retry={"max_attempts": 40, "initial_backoff": "50ms", "max_backoff": "100ms"},
    )
    async with running_stack(
        tmp_path, definitions=definitions, breaker_failure_threshold=3, breaker_reset_timeout=0.5
    ) as stack:
        stock = await stack.stock("SKU-MUG")
        await stack.faults("inventory", reserve=(-1, 0))
        reply = await stack.place()
        assert reply.status == pb.SAGA_STATUS_COMPENSATED
        assert reply.failure.step == "reserve_stock"
        saga = await stack.saga(reply.saga_id)
        # Three failures open the breaker; the next attempts fail fast...
        assert outcomes(saga, "reserve_stock") == ["transient"] * 3 + ["breaker_open"] * 2
        calls = await stack.calls("inventory")
        assert calls["reserve"] == 3  # ...without touching the participant
        # The release waits out the open breaker, goes through as the half-open trial.
        release = outcomes(saga, "reserve_stock", "compensate")
        assert release[-1] == "ok" and set(release[:-1]) <= {"breaker_open"}
        assert calls["release"] == 1
        inventory = await breaker(stack.api, "inventory")
        assert (inventory.state, inventory.failure_count) == ("closed", 0)
        assert [(t.from_state, t.to_state) for t in inventory.transitions] == [
            ("closed", "open"),
            ("open", "half-open"),
            ("half-open", "closed"),
        ]
        assert (inventory.failure_threshold, inventory.reset_timeout_seconds) == (3, 0.5)
        assert await stack.stock("SKU-MUG") == stock
        await stack.faults("inventory")
        assert (await stack.place()).status == pb.SAGA_STATUS_COMPLETED


async def test_business_rejections_do_not_trip_the_breaker(tmp_path: Path) -> None:
    async with running_stack(
        tmp_path, breaker_failure_threshold=2, breaker_reset_timeout=30.0
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
