"""The coordinator's saga metrics, read from an ``InMemoryMetricReader``.

A saga's end is recorded just after its last transition is logged, which is
when ``PlaceOrder`` may answer: the tests wait for the numbers, with a deadline.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.metrics.export import HistogramDataPoint

from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import write_definitions
from tests.support import wait_until
from tests.telemetry_support import TracedStack, traced_stack

SAGA = {"saga.type": "place_order", "saga.mode": "orchestration"}


async def _counted(traced: TracedStack, name: str, expected: float, **attributes: str) -> None:
    await wait_until(
        lambda: traced.value(name, **attributes) >= expected,
        message=f"{name} {attributes} >= {expected}",
    )
    assert traced.value(name, **attributes) == expected


async def test_sagas_and_steps_are_counted_and_timed(tmp_path: Path) -> None:
    async with traced_stack(tmp_path) as traced:
        completed = await traced.stack.place("alice")
        compensated = await traced.stack.place("carol")  # the charge is declined
        assert completed.status == pb.SAGA_STATUS_COMPLETED
        assert compensated.status == pb.SAGA_STATUS_COMPENSATED

        await _counted(traced, "sagas_completed", 1, **SAGA)
        await _counted(traced, "sagas_compensated", 1, **SAGA)
        assert traced.value("sagas_started", **SAGA) == 2
        assert traced.value("sagas_needing_attention") == 0

        durations = {
            attributes["saga.outcome"]: point
            for attributes, point in traced.points("saga_duration")
        }
        assert set(durations) == {"completed", "compensated"}
        for point in durations.values():
            assert isinstance(point, HistogramDataPoint)
            assert point.count == 1 and 0 < point.sum < 30

        steps = {
            (a["saga.step"], a["saga.action"], a["saga.outcome"]): point
            for a, point in traced.points("step_duration")
        }
        # carol's reservation runs beside her charge: the decline may interrupt it.
        interrupted = ("reserve_stock", "reserve", "interrupted")
        assert set(steps) - {interrupted} == {
            ("create_order", "create_order", "ok"),
            ("reserve_stock", "reserve", "ok"),
            ("charge_payment", "charge", "ok"),
            ("charge_payment", "charge", "rejected"),
            ("schedule_shipment", "schedule", "ok"),
            ("approve_order", "approve_order", "ok"),
            ("reserve_stock", "release", "ok"),
            ("create_order", "cancel_order", "ok"),
        }
        for point in steps.values():
            assert isinstance(point, HistogramDataPoint)
            assert point.sum > 0
        assert traced.value("step_duration", **{"saga.step": "create_order"}) == 3
        assert traced.value("step_duration", **{"saga.step": "reserve_stock"}) == 3
        assert traced.value("step_duration", **{"saga.step": "charge_payment"}) == 2
        assert traced.value("step_duration", **{"saga.step": "schedule_shipment"}) == 1
        assert traced.value("step_retries") == 0
        # Every participant's breaker is watched from the start, closed.
        assert traced.values_by("breaker_state", "participant") == {
            "inventory": 0,
            "order": 0,
            "payment": 0,
            "shipping": 0,
        }


async def test_retries_breakers_and_sagas_needing_attention(tmp_path: Path) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", compensation_retry={"max_attempts": 3})
    # One failure opens a breaker; each later attempt waits for it and is its trial call.
    async with traced_stack(
        tmp_path, definitions=definitions, breaker_minimum_calls=1, breaker_reset_timeout=0.05
    ) as traced:
        # carol's charge is declined; the release of her stock always fails.
        await traced.stack.faults("inventory", release=(-1, 0))
        placed = await traced.stack.place("carol")
        assert placed.status == pb.SAGA_STATUS_NEEDS_ATTENTION

        await _counted(traced, "sagas_needing_attention", 1, **SAGA)
        assert traced.value("sagas_compensated") == 0
        # Three real attempts of the release, all transient: waiting for the open
        # breaker spent none of the budget.
        release = {"saga.step": "reserve_stock", "saga.action": "release"}
        assert traced.value("step_retries", **release) == 2
        assert traced.value("step_duration", **release, **{"saga.outcome": "transient"}) == 3
        assert traced.value("step_duration", **release, **{"saga.outcome": "breaker_open"}) == 0
        assert traced.values_by("breaker_state", "participant")["inventory"] == 2  # open


async def test_choreographed_sagas_are_counted_by_the_observer(tmp_path: Path) -> None:
    choreographed = {"saga.type": "place_order", "saga.mode": "choreography"}
    async with traced_stack(tmp_path, reactions=True, mode="choreography") as traced:
        completed = await traced.stack.place("alice")
        compensated = await traced.stack.place("carol")  # the charge is declined
        assert completed.status == pb.SAGA_STATUS_COMPLETED
        assert compensated.status == pb.SAGA_STATUS_COMPENSATED
        await _counted(traced, "sagas_completed", 1, **choreographed)
        await _counted(traced, "sagas_compensated", 1, **choreographed)
        assert traced.value("sagas_started", **choreographed) == 2
