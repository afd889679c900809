"""What a choreography event says about its saga, and the log changes that record it.

This is the pure half of the observer (coordinator/observer.py). Each place_order
event reports one step's outcome; :func:`plan` turns it into the same changes an
orchestrated saga goes through (an attempt started and ended, the step's status,
then the saga's), so ``GetSaga`` and ``WatchSaga`` show both kinds alike.

The first step (create_order) is the coordinator's own call even in choreography,
so its events are not observed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import any_pb2

from coordinator.records import (
    TERMINAL,
    AttemptChange,
    Change,
    Direction,
    ErrorDetail,
    Failure,
    Kind,
    Outcome,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
)
from protos.sagawire.v1 import events_pb2, participant_pb2
from services import saga_events as ev

# event type -> what it says about the step it names
_STEP_STATUS: dict[str, StepStatus] = {
    ev.STOCK_RESERVED: StepStatus.SUCCEEDED,
    ev.STOCK_REJECTED: StepStatus.REJECTED,
    ev.PAYMENT_CHARGED: StepStatus.SUCCEEDED,
    ev.PAYMENT_DECLINED: StepStatus.REJECTED,
    ev.SHIPMENT_SCHEDULED: StepStatus.SUCCEEDED,
    ev.SHIPMENT_FAILED: StepStatus.REJECTED,
    ev.ORDER_APPROVED: StepStatus.SUCCEEDED,
    ev.PAYMENT_REFUNDED: StepStatus.COMPENSATED,
    ev.STOCK_RELEASED: StepStatus.COMPENSATED,
    ev.SHIPMENT_CANCELLED: StepStatus.COMPENSATED,
    ev.ORDER_CANCELLED: StepStatus.COMPENSATED,
}

OBSERVED_TYPES = tuple(sorted(_STEP_STATUS))
# Transitions the observer records carry "observed <event type>" as their detail.
OBSERVED = "observed "


@dataclass(frozen=True)
class Observation:
    """One step's outcome, as reported by an event."""

    saga_id: str
    step: str
    step_status: StepStatus
    event_type: str
    at: datetime
    # The saga's data as the event carries it (a packed OrderSagaData).
    data: bytes
    failure: Failure | None
    event: events_pb2.Event


def observe(event: events_pb2.Event) -> Observation | None:
    """The observation an event makes, or None (not a choreographed place_order event)."""
    status = _STEP_STATUS.get(event.type)
    payload = events_pb2.OrderSagaEvent()
    if status is None or not event.data.Unpack(payload):
        return None
    if payload.mode != participant_pb2.SAGA_MODE_CHOREOGRAPHY:
        return None
    failure = None
    if status is StepStatus.REJECTED:
        failure = Failure(payload.step, "FAILED_PRECONDITION", payload.reason, payload.message)
    packed = any_pb2.Any()
    packed.Pack(payload.data)
    return Observation(
        saga_id=event.subject,
        step=payload.step,
        step_status=status,
        event_type=event.type,
        at=event.time.ToDatetime(tzinfo=UTC),
        data=packed.SerializeToString(),
        failure=failure,
        event=event,
    )


def plan(record: SagaRecord, seen: Observation) -> list[Change]:
    """The changes that record ``seen`` on the saga; none if it says nothing new."""
    try:
        step = record.step(seen.step)
    except KeyError:
        return []
    if step.status is seen.step_status or (
        seen.step_status is not StepStatus.COMPENSATED and step.status is StepStatus.COMPENSATED
    ):
        # Redelivered, or older news than what we know (the runner may have recorded it
        # first): nothing to add about the step, but the saga may now be settled.
        settled = None if record.status in TERMINAL else settlement(record, seen.at)
        return [settled] if settled is not None else []
    started_at = min(record.updated_at, seen.at)
    detail = OBSERVED + seen.event_type
    if seen.step_status is StepStatus.COMPENSATED:
        number = len(step.attempts_of(Phase.COMPENSATE)) + 1
        changes = [
            Change(
                kind=Kind.COMPENSATION_STARTED,
                at=started_at,
                step=step.name,
                attempt=AttemptChange(Phase.COMPENSATE, number),
                step_status=StepStatus.COMPENSATING,
                detail=detail,
            ),
            Change(
                kind=Kind.COMPENSATION_DONE,
                at=seen.at,
                step=step.name,
                attempt=AttemptChange(Phase.COMPENSATE, number, Outcome.OK),
                step_status=StepStatus.COMPENSATED,
                detail=detail,
            ),
        ]
    else:
        number = len(step.attempts_of(Phase.EXECUTE)) + 1
        rejected = seen.failure is not None
        error = None
        if seen.failure is not None:
            error = ErrorDetail(seen.failure.code, seen.failure.reason, seen.failure.message)
        changes = [
            Change(
                kind=Kind.STEP_STARTED,
                at=started_at,
                step=step.name,
                attempt=AttemptChange(Phase.EXECUTE, number),
                step_status=StepStatus.RUNNING,
                detail=detail,
            ),
            Change(
                kind=Kind.STEP_REJECTED if rejected else Kind.STEP_SUCCEEDED,
                at=seen.at,
                step=step.name,
                attempt=AttemptChange(
                    Phase.EXECUTE, number, Outcome.REJECTED if rejected else Outcome.OK, error
                ),
                step_status=seen.step_status,
                result=None if rejected else seen.data,
                detail=detail,
            ),
        ]
    if record.status in TERMINAL:
        return changes  # late news about a finished saga: steps only
    after = record
    for change in changes:
        after, _ = apply(after, change)
    changes.extend(_saga_changes(after, seen))
    return changes


# A choreographed saga can still be settled from these (a stalled one, too).
OPEN = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.STALLED})
_UNDONE = frozenset({StepStatus.PENDING, StepStatus.REJECTED, StepStatus.COMPENSATED})


def settlement(record: SagaRecord, at: datetime) -> Change | None:
    """The terminal transition the saga's steps add up to, if they do.

    Completed once every step succeeded; compensated once it turned back and every
    step is undone (or never ran). Only from an open status, so whoever records
    it second (observer or runner) is refused instead of recording it twice.
    """
    statuses = {s.status for s in record.steps}
    if statuses == {StepStatus.SUCCEEDED}:
        return Change(
            kind=Kind.SAGA_COMPLETED, at=at, saga_status=SagaStatus.COMPLETED, require_status=OPEN
        )
    if record.direction is Direction.BACKWARD and statuses <= _UNDONE:
        return Change(
            kind=Kind.SAGA_COMPENSATED,
            at=at,
            saga_status=SagaStatus.COMPENSATED,
            require_status=OPEN,
        )
    return None


def _saga_changes(record: SagaRecord, seen: Observation) -> list[Change]:
    """The saga-level transition the step's news leads to, if any."""
    settled = settlement(record, seen.at)
    if settled is not None:
        return [settled]
    if seen.failure is not None and record.direction is Direction.FORWARD:
        turned = Change(
            kind=Kind.SAGA_COMPENSATING,
            at=seen.at,
            saga_status=SagaStatus.COMPENSATING,
            direction=Direction.BACKWARD,
            failure=seen.failure,
            detail=seen.failure.describe(),
        )
        # Streams race: the undoing may have been observed before the failure that caused it.
        settled = settlement(apply(record, turned)[0], seen.at)
        return [turned] if settled is None else [turned, settled]
    return []
