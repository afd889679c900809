"""What a saga does next, read off its definition and its record: pure functions.

The runner (coordinator/engine/runner.py) asks these which steps start once one has
succeeded, which intents to log with them, and what ran after a step (so it is
undone first). Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from contract.definitions import SagaDefinition, SagaMode, Step
from coordinator.log.records import (
    AttemptChange,
    Change,
    Direction,
    Failure,
    Kind,
    Phase,
    SagaRecord,
    StepStatus,
)


def intent(step: Step, phase: Phase, number: int, at: datetime) -> Change:
    """The change that logs an attempt of ``step`` before it is made."""
    execute = phase is Phase.EXECUTE
    return Change(
        kind=Kind.STEP_STARTED if execute else Kind.COMPENSATION_STARTED,
        at=at,
        step=step.name,
        attempt=AttemptChange(phase, number),
        step_status=StepStatus.RUNNING if execute else StepStatus.COMPENSATING,
    )


def first_intents(definition: SagaDefinition, at: datetime) -> tuple[Change, ...]:
    """The intents of a new saga's first attempts, to be logged with the saga itself
    (:meth:`SagaLog.create`): the run then finds them logged and does not log them again."""
    return tuple(intent(s, Phase.EXECUTE, 1, at) for s in definition.first_steps)


def logged_open(record: SagaRecord, step: str, phase: Phase, number: int) -> bool:
    """Whether that attempt was logged and has not ended (its intent is written)."""
    return any(
        a.phase is phase and a.number == number and a.outcome is None
        for a in record.step(step).attempts
    )


def all_succeeded(record: SagaRecord, steps: Sequence[Step]) -> bool:
    return all(record.step(s.name).status is StepStatus.SUCCEEDED for s in steps)


def carried_by_services(definition: SagaDefinition, record: SagaRecord) -> bool:
    """Whether a saga is a choreographed one the services carry on by themselves: its
    first steps succeeded and it has not turned back, or it turned back on a failure
    the services reported (a later step's rejection: they undo what ran, in reverse
    order). The coordinator has nothing left to call; the observer records the rest as
    the services' events arrive. A saga turned back by the coordinator's own start (a
    first step refused, or not confirmed by the deadline) is the coordinator's to undo."""
    # The saga's own mode, as logged: a coordinator restarted in the other mode
    # still finishes the sagas it started.
    if record.mode != SagaMode.CHOREOGRAPHY.value:
        return False
    if record.direction is Direction.FORWARD:
        return all(took_effect(definition, record, s.name) for s in definition.roots)
    failed = record.failure
    return failed is not None and failed.step not in {s.name for s in definition.roots}


# What the observer may have recorded of a step that took effect. The streams are
# ordered per producer only: a step's compensation (order.cancelled) can be observed
# before the rejection that turned the saga back (payment.declined), so a first step
# may be COMPENSATED while the saga still reads FORWARD.
_TOOK_EFFECT = frozenset({StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED})


def took_effect(definition: SagaDefinition, record: SagaRecord, step: str) -> bool:
    """Whether a choreographed first step is known to have taken effect: the log says
    it succeeded or was (being) undone. (That a step after it ran says so too, but the
    first step's own success is the coordinator's to record, through the barrier's
    replay: the observer does not record it, so a saga left to the services on that
    ground alone would never add up.)"""
    return record.step(step).status in _TOOK_EFFECT


def ran_past(definition: SagaDefinition, record: SagaRecord, step: str) -> bool:
    """Whether a step that runs after ``step`` has an outcome, which in choreography
    means ``step`` took effect: the services react only to its events."""
    return any(
        record.step(name).status is not StepStatus.PENDING for name in descendants(definition, step)
    )


def unblocked_by(
    definition: SagaDefinition, record: SagaRecord, finished: Step
) -> tuple[Step, ...]:
    """The steps of an orchestrated saga that start at once now that ``finished``
    succeeded (``record`` says so): its dependents whose other dependencies succeeded
    too, or the first forward-only steps when the compensable phase is over."""
    if record.mode != SagaMode.ORCHESTRATION.value or record.direction is not Direction.FORWARD:
        return ()
    succeeded = {s.name for s in record.steps if s.status is StepStatus.SUCCEEDED}
    compensable = definition.compensable
    if finished.name not in definition.forward_only and succeeded.issuperset(
        s.name for s in compensable
    ):
        candidates, waiting = definition.forward, False  # the forward-only phase starts
    elif finished.name in definition.forward_only:
        candidates, waiting = definition.forward, True
    else:
        candidates, waiting = compensable, True
    return tuple(
        s
        for s in candidates
        if (finished.name in s.after or not waiting)
        and record.step(s.name).status is StepStatus.PENDING
        and succeeded.issuperset(s.after)
    )


def failure_of(record: SagaRecord, step: str) -> Failure:
    """Why a step failed, from its last attempt with an error."""
    for attempt in reversed(record.step(step).attempts_of(Phase.EXECUTE)):
        if attempt.error is not None:
            e = attempt.error
            return Failure(step, e.code, e.reason, e.message)
    return Failure(step, "UNKNOWN", "", "outcome unknown")


def descendants(definition: SagaDefinition, name: str) -> set[str]:
    """Every step that runs after ``name``, directly or not."""
    return set(definition.descendants(name))
