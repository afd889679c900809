"""What a choreography event says about its saga, and the log changes that record it.

This is the pure half of the observer (coordinator/choreography/observer.py). Each saga event
reports one step's outcome: the event names its saga definition and step, and the
participants' catalogue of the same definitions says what its type means (success,
rejection, compensation): no table of its own. :func:`changes_for` turns it into the same
changes an orchestrated saga goes through (an attempt started and ended, the step's
status, then the saga's), so ``GetSaga`` and ``WatchSaga`` show both kinds alike.

A first step is the coordinator's own call even in choreography, so its success
and rejection are not observed here (its compensation, which the services make, is).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import any_pb2

from contract.definitions import DEFAULT_SAGA, Definitions, EventKind
from coordinator.log.records import (
    TERMINAL,
    AttemptChange,
    AttemptOutcome,
    Change,
    Direction,
    ErrorDetail,
    Failure,
    Kind,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
)
from protos.sagawire.v1 import events_pb2, participant_pb2

# What an event of each kind says about the step it names.
_STEP_STATUS = {
    EventKind.SUCCEEDED: StepStatus.SUCCEEDED,
    EventKind.REJECTED: StepStatus.REJECTED,
    EventKind.COMPENSATED: StepStatus.COMPENSATED,
}
# Transitions the observer records carry "observed <event type>" as their detail.
OBSERVED = "observed "


def _observed_kinds(first: bool) -> tuple[EventKind, ...]:
    # A first step's execute is the coordinator's call: the runner records its outcome.
    return (EventKind.COMPENSATED,) if first else tuple(EventKind)


def observed_types(definitions: Definitions) -> tuple[str, ...]:
    """The event types the observer follows: every step's outcomes, as declared."""
    found = {
        event_type
        for definition in definitions.sagas.values()
        for step in definition.steps
        for kind in _observed_kinds(not step.after)
        if (event_type := step.events.of(kind)) is not None
    }
    return tuple(sorted(found))


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


def observe(event: events_pb2.Event, definitions: Definitions) -> Observation | None:
    """The observation an event makes, or None (not a choreographed saga's step event)."""
    payload = events_pb2.OrderSagaEvent()
    if not event.data.Unpack(payload) or payload.mode != participant_pb2.SAGA_MODE_CHOREOGRAPHY:
        return None
    definition = definitions.get(payload.saga or DEFAULT_SAGA)
    if definition is None:
        return None
    try:
        step = definition.step(payload.step)
    except KeyError:
        return None
    kind = step.events.kind_of(event.type)
    if kind is None or kind not in _observed_kinds(not step.after):
        return None
    status = _STEP_STATUS[kind]
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


def changes_for(record: SagaRecord, seen: Observation) -> list[Change]:
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
                attempt=AttemptChange(Phase.COMPENSATE, number, AttemptOutcome.OK),
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
                    Phase.EXECUTE,
                    number,
                    AttemptOutcome.REJECTED if rejected else AttemptOutcome.OK,
                    error,
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
