"""coordinator.engine.plan: which steps of place_order start once another succeeded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contract.definitions import SagaMode, load_definitions
from coordinator.engine.plan import (
    carried_by_services,
    first_intents,
    intent,
    logged_open,
    ran_past,
    unblocked_by,
)
from coordinator.log.records import (
    AttemptChange,
    AttemptOutcome,
    Change,
    Direction,
    Failure,
    Kind,
    NewSaga,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
    new_record,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ORCHESTRATED = load_definitions().sagas["place_order"]
CHOREOGRAPHED = load_definitions(mode="choreography").sagas["place_order"]


def fresh(mode: SagaMode = SagaMode.ORCHESTRATION) -> SagaRecord:
    new = NewSaga(
        "s-1",
        "place_order",
        mode.value,
        b"",
        tuple(s.name for s in ORCHESTRATED.steps),
        T0,
        T0 + timedelta(seconds=30),
    )
    return new_record(new)


def succeed(record: SagaRecord, *steps: str) -> SagaRecord:
    for name in steps:
        record, _ = apply(record, intent(ORCHESTRATED.step(name), Phase.EXECUTE, 1, T0))
        done = Change(
            Kind.STEP_SUCCEEDED,
            T0,
            name,
            AttemptChange(Phase.EXECUTE, 1, AttemptOutcome.OK),
            step_status=StepStatus.SUCCEEDED,
        )
        record, _ = apply(record, done)
    return record


def started(record: SagaRecord, *steps: str) -> SagaRecord:
    for name in steps:
        record, _ = apply(record, intent(ORCHESTRATED.step(name), Phase.EXECUTE, 1, T0))
    return record


def names(record: SagaRecord, finished: str) -> list[str]:
    return [s.name for s in unblocked_by(ORCHESTRATED, record, ORCHESTRATED.step(finished))]


def test_a_new_saga_starts_with_its_root_steps_intents() -> None:
    assert [c.step for c in first_intents(ORCHESTRATED, T0)] == ["create_order"]
    assert [c.step for c in first_intents(CHOREOGRAPHED, T0)] == ["create_order"]
    record, _ = apply(fresh(), first_intents(ORCHESTRATED, T0)[0])
    assert logged_open(record, "create_order", Phase.EXECUTE, 1)
    assert not logged_open(record, "create_order", Phase.EXECUTE, 2)
    assert not logged_open(record, "reserve_stock", Phase.EXECUTE, 1)


def test_each_result_unblocks_the_steps_that_wait_only_for_it() -> None:
    record = succeed(fresh(), "create_order")
    assert names(record, "create_order") == ["reserve_stock", "charge_payment"]
    # The stock is reserved while the charge runs: nothing new can start yet.
    record = succeed(started(record, "charge_payment"), "reserve_stock")
    assert names(record, "reserve_stock") == []
    record = succeed(record, "charge_payment")
    assert names(record, "charge_payment") == ["schedule_shipment"]
    # The pivot ends the compensable phase: the forward-only step starts.
    record = succeed(record, "schedule_shipment")
    assert names(record, "schedule_shipment") == ["approve_order"]
    record = succeed(record, "approve_order")
    assert names(record, "approve_order") == []


def test_a_step_already_started_is_not_started_again() -> None:
    record = succeed(started(fresh(), "reserve_stock"), "create_order")
    assert names(record, "create_order") == ["charge_payment"]


@pytest.mark.parametrize("backwards", [False, True])
def test_nothing_starts_in_choreography_or_once_the_saga_turned_back(backwards: bool) -> None:
    if backwards:
        record = succeed(fresh(), "create_order")
        turned = Change(
            Kind.SAGA_COMPENSATING,
            T0,
            saga_status=SagaStatus.COMPENSATING,
            direction=Direction.BACKWARD,
        )
        record, _ = apply(record, turned)
    else:
        record = succeed(fresh(SagaMode.CHOREOGRAPHY), "create_order")
    assert names(record, "create_order") == []


def test_only_a_choreographed_saga_past_its_first_step_is_left_to_the_services() -> None:
    choreographed = fresh(SagaMode.CHOREOGRAPHY)
    assert not carried_by_services(CHOREOGRAPHED, choreographed)
    assert not carried_by_services(CHOREOGRAPHED, started(choreographed, "create_order"))
    assert carried_by_services(CHOREOGRAPHED, succeed(choreographed, "create_order"))
    # The saga's logged mode decides, not the mode the coordinator runs in now.
    assert carried_by_services(ORCHESTRATED, succeed(choreographed, "create_order"))
    assert not carried_by_services(CHOREOGRAPHED, succeed(fresh(), "create_order"))
    turned = Change(
        Kind.SAGA_COMPENSATING,
        T0,
        saga_status=SagaStatus.COMPENSATING,
        direction=Direction.BACKWARD,
    )
    backward, _ = apply(succeed(choreographed, "create_order"), turned)
    assert not carried_by_services(CHOREOGRAPHED, backward)


def turned_back(record: SagaRecord, step: str) -> SagaRecord:
    turned = Change(
        Kind.SAGA_COMPENSATING,
        T0,
        saga_status=SagaStatus.COMPENSATING,
        direction=Direction.BACKWARD,
        failure=Failure(step, "FAILED_PRECONDITION", "REFUSED", ""),
    )
    return apply(record, turned)[0]


def test_a_choreographed_saga_the_services_turned_back_is_theirs_to_undo() -> None:
    started = succeed(fresh(SagaMode.CHOREOGRAPHY), "create_order")
    # A later step's rejection, reported by the services: they undo what ran.
    assert carried_by_services(CHOREOGRAPHED, turned_back(started, "charge_payment"))
    # The coordinator's own start failed (refused, or unconfirmed by the deadline):
    # the coordinator undoes it.
    assert not carried_by_services(CHOREOGRAPHED, turned_back(started, "create_order"))
    never = fresh(SagaMode.CHOREOGRAPHY)
    assert not carried_by_services(CHOREOGRAPHED, turned_back(never, "create_order"))
    # An orchestrated saga is always the coordinator's.
    assert not carried_by_services(
        ORCHESTRATED, turned_back(succeed(fresh(), "create_order"), "charge_payment")
    )


def test_a_step_ran_past_once_a_step_after_it_has_an_outcome() -> None:
    record = fresh(SagaMode.CHOREOGRAPHY)
    assert not ran_past(CHOREOGRAPHED, record, "create_order")
    record = succeed(record, "charge_payment")
    assert ran_past(CHOREOGRAPHED, record, "create_order")
    assert not ran_past(CHOREOGRAPHED, record, "reserve_stock")  # its sibling, not after it
    assert not ran_past(CHOREOGRAPHED, record, "approve_order")


def test_a_first_step_observed_undone_before_the_rejection_is_the_services_to_carry() -> None:
    # Found by `sagawire chaos --open-loop --seed 2`: the observer recorded order's
    # cancellation (its stream was ahead) before payment's decline turned the saga
    # back; a coordinator restarted in between re-sent create_order, overwrote its
    # COMPENSATED status with RUNNING and nothing ever settled the saga.
    record = succeed(fresh(SagaMode.CHOREOGRAPHY), "create_order")
    undone = Change(
        Kind.COMPENSATION_DONE,
        T0,
        step="create_order",
        step_status=StepStatus.COMPENSATED,
        detail="observed sagawire.order.cancelled",
    )
    record, _ = apply(record, undone)
    assert record.direction is Direction.FORWARD
    assert carried_by_services(CHOREOGRAPHED, record)
    # A first step still unconfirmed stays the coordinator's to confirm (the barrier
    # replays it), however far the services got: the observer does not record it.
    later = succeed(started(fresh(SagaMode.CHOREOGRAPHY), "create_order"), "reserve_stock")
    assert not carried_by_services(CHOREOGRAPHED, later)


def test_a_step_being_undone_is_not_moved_back_by_news_of_its_execute() -> None:
    # The runner records a barrier replay of create_order after the observer recorded
    # its compensation: the step stays undone, so the saga can still settle.
    record = started(fresh(SagaMode.CHOREOGRAPHY), "create_order")
    undone = Change(
        Kind.COMPENSATION_DONE, T0, step="create_order", step_status=StepStatus.COMPENSATED
    )
    record, _ = apply(record, undone)
    for late in (StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.FAILED):
        news = Change(Kind.STEP_SUCCEEDED, T0, step="create_order", step_status=late)
        assert apply(record, news)[0].step("create_order").status is StepStatus.COMPENSATED
