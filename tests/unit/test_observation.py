"""The observer's reading of choreography events: any arrival order, one right outcome.

Each producer's events arrive in order, but the four streams race each other, so
the observer may learn of an undo before the failure that caused it. Whatever
the interleaving, the saga must end in the same state, settled exactly once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from contract.definitions import load_definitions
from coordinator.choreography.observation import changes_for, observe, observed_types
from coordinator.log.records import (
    TERMINAL,
    AttemptChange,
    AttemptOutcome,
    Change,
    Kind,
    NewSaga,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
    new_record,
)
from protos.sagawire.v1 import events_pb2, order_saga_pb2, participant_pb2
from services import saga_events as ev

DEFINITIONS = load_definitions()
STEPS = ("create_order", "reserve_stock", "charge_payment", "schedule_shipment", "approve_order")
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# (source, type, step, reason) in each producer's own order.
COMPLETED = [
    ("inventory", ev.STOCK_RESERVED, "reserve_stock", ""),
    ("payment", ev.PAYMENT_CHARGED, "charge_payment", ""),
    ("shipping", ev.SHIPMENT_SCHEDULED, "schedule_shipment", ""),
    ("order", ev.ORDER_APPROVED, "approve_order", ""),
]
DECLINED = [
    ("inventory", ev.STOCK_RESERVED, "reserve_stock", ""),
    ("payment", ev.PAYMENT_DECLINED, "charge_payment", "INSUFFICIENT_FUNDS"),
    ("inventory", ev.STOCK_RELEASED, "reserve_stock", ""),
    ("order", ev.ORDER_CANCELLED, "create_order", ""),
]
UNSHIPPABLE = [
    ("inventory", ev.STOCK_RESERVED, "reserve_stock", ""),
    ("payment", ev.PAYMENT_CHARGED, "charge_payment", ""),
    ("shipping", ev.SHIPMENT_FAILED, "schedule_shipment", "UNSERVICEABLE_DESTINATION"),
    ("payment", ev.PAYMENT_REFUNDED, "charge_payment", ""),
    ("inventory", ev.STOCK_RELEASED, "reserve_stock", ""),
    ("order", ev.ORDER_CANCELLED, "create_order", ""),
]


def _event(n: int, source: str, event_type: str, step: str, reason: str) -> events_pb2.Event:
    payload = events_pb2.OrderSagaEvent(
        data=order_saga_pb2.OrderSagaData(order_id="o-1"),
        mode=participant_pb2.SAGA_MODE_CHOREOGRAPHY,
        step=step,
        reason=reason,
    )
    event = events_pb2.Event(id=f"e-{n}", source=source, type=event_type, subject="s-1")
    event.time.FromDatetime(T0 + timedelta(milliseconds=n))
    event.data.Pack(payload)
    return event


def _started_saga() -> SagaRecord:
    """A choreographed saga whose create_order the coordinator saw succeed."""
    record = new_record(
        NewSaga("s-1", "place_order", "choreography", b"", STEPS, T0, T0 + timedelta(seconds=30))
    )
    for change in (
        Change(
            Kind.STEP_STARTED,
            T0,
            "create_order",
            AttemptChange(Phase.EXECUTE, 1),
            StepStatus.RUNNING,
        ),
        Change(
            Kind.STEP_SUCCEEDED,
            T0,
            "create_order",
            AttemptChange(Phase.EXECUTE, 1, AttemptOutcome.OK),
            StepStatus.SUCCEEDED,
        ),
    ):
        record, _ = apply(record, change)
    return record


def _interleavings(script: list[tuple[str, str, str, str]]) -> st.SearchStrategy[list[int]]:
    """Orders of the script's indexes that keep each producer's events in order."""

    @st.composite
    def build(draw: st.DrawFn) -> list[int]:
        queues: dict[str, list[int]] = {}
        for i, (source, *_rest) in enumerate(script):
            queues.setdefault(source, []).append(i)
        order: list[int] = []
        while any(queues.values()):
            source = draw(st.sampled_from(sorted(s for s, q in queues.items() if q)))
            order.append(queues[source].pop(0))
        return order

    return build()


def _run(script: list[tuple[str, str, str, str]], order: list[int]) -> tuple[SagaRecord, int]:
    record = _started_saga()
    settled = 0
    for i in order:
        seen = observe(_event(i, *script[i]), DEFINITIONS)
        assert seen is not None
        for change in changes_for(record, seen):
            if change.require_status is not None and record.status not in change.require_status:
                continue  # the log would refuse it
            record, _ = apply(record, change)
            settled += change.saga_status in TERMINAL
    return record, settled


@given(_interleavings(COMPLETED))
def test_a_completed_saga_completes_once_in_any_arrival_order(order: list[int]) -> None:
    record, settled = _run(COMPLETED, order)
    assert (record.status, settled) == (SagaStatus.COMPLETED, 1)
    assert {s.status for s in record.steps} == {StepStatus.SUCCEEDED}


@given(_interleavings(DECLINED))
def test_a_declined_saga_is_compensated_once_in_any_arrival_order(order: list[int]) -> None:
    record, settled = _run(DECLINED, order)
    assert (record.status, settled) == (SagaStatus.COMPENSATED, 1)
    assert record.failure is not None
    assert (record.failure.step, record.failure.reason) == ("charge_payment", "INSUFFICIENT_FUNDS")
    assert record.step("reserve_stock").status is StepStatus.COMPENSATED


@given(_interleavings(UNSHIPPABLE))
def test_a_shipping_failure_is_compensated_once_in_any_arrival_order(order: list[int]) -> None:
    record, settled = _run(UNSHIPPABLE, order)
    assert (record.status, settled) == (SagaStatus.COMPENSATED, 1)
    assert record.failure is not None
    assert record.failure.step == "schedule_shipment"
    statuses = {s.name: s.status for s in record.steps}
    assert statuses["charge_payment"] is StepStatus.COMPENSATED
    assert statuses["schedule_shipment"] is StepStatus.REJECTED


def test_redelivered_events_add_nothing() -> None:
    record, _ = _run(COMPLETED, [0, 1, 2, 3])
    seen = observe(_event(0, *COMPLETED[0]), DEFINITIONS)
    assert seen is not None
    assert changes_for(record, seen) == []


def test_orchestrated_events_are_not_observed() -> None:
    event = _event(0, *COMPLETED[0])
    payload = events_pb2.OrderSagaEvent()
    event.data.Unpack(payload)
    payload.mode = participant_pb2.SAGA_MODE_ORCHESTRATION
    event.data.Pack(payload)
    assert observe(event, DEFINITIONS) is None


def test_the_first_steps_outcomes_are_the_coordinators_to_record() -> None:
    """A first step's execute is the coordinator's call: its success and rejection are
    not observed; its compensation (the services') is."""
    types = observed_types(DEFINITIONS)
    assert ev.ORDER_CREATED not in types and ev.ORDER_REJECTED not in types
    assert {ev.ORDER_CANCELLED, ev.STOCK_RESERVED, ev.PAYMENT_DECLINED} <= set(types)
    assert observe(_event(0, "order", ev.ORDER_CREATED, "create_order", ""), DEFINITIONS) is None


def test_an_event_is_read_with_the_definition_it_names() -> None:
    event = _event(0, "payment", "sagawire.payment.return_refunded", "refund_payment", "")
    payload = events_pb2.OrderSagaEvent()
    event.data.Unpack(payload)
    payload.saga = "return_order"
    event.data.Pack(payload)
    seen = observe(event, DEFINITIONS)
    assert seen is not None
    assert (seen.step, seen.step_status) == ("refund_payment", StepStatus.SUCCEEDED)
    # The same event naming a saga that has no such step says nothing.
    payload.saga = "place_order"
    event.data.Pack(payload)
    assert observe(event, DEFINITIONS) is None
