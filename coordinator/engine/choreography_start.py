"""How the coordinator starts a choreographed saga: it runs only the first step(s).

The services' reactions to each other's events carry the saga on from there, and
the observer (coordinator/choreography/observer.py) follows the rest and settles the saga.

A start never leaves a saga hanging. The first steps are retried until the saga's
deadline (a saga resumed past it gets one ordinary retry budget). If they are still
unconfirmed then, the services' events may show they took effect anyway (a later
step ran: the replies were lost), and the services carry the saga on; otherwise the
saga compensates them, through the barrier, which turns "never arrived" into a
null compensation and refuses the execute if it arrives late.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common.errors import Aborted
from coordinator.choreography.observation import settlement
from coordinator.engine.plan import carried_by_services, failure_of, ran_past
from coordinator.log.records import Change, Failure, Kind, SagaRecord, StepStatus, apply
from coordinator.log.saga_log import StatusConflict

if TYPE_CHECKING:
    from coordinator.engine.runner import SagaRun

log = logging.getLogger(__name__)

NOT_STARTED = "SAGA_DEADLINE_EXCEEDED"


async def start_choreography(run: SagaRun) -> Failure | None:
    """Run the first step(s); a Failure means the saga must compensate.

    The first step is retried until the participant answers, within the saga's
    deadline: once it took effect the flow runs without us. A refusal ends the saga
    (nothing took effect anywhere); so does a first step left unconfirmed past the
    deadline that the services show no sign of (see the module docstring).
    """
    if carried_by_services(run.definition, run.record):
        return None
    roots = run.definition.roots
    remaining = (run.record.deadline - run.runner.clock()).total_seconds()
    if remaining > 0:
        try:
            async with asyncio.timeout(remaining):
                failure = await run.run_steps(roots, forward_only=True)
        except TimeoutError:
            return await _unconfirmed(run)
    else:
        # Resumed (or retried) past the deadline: the first steps were in flight when
        # the coordinator stopped and may have taken effect, so they are sent again,
        # once, with an ordinary retry budget; the barrier replays what took effect.
        failure = await run.run_steps(roots, forward_only=False)
        if any(run.record.step(s.name).status is StepStatus.FAILED for s in roots):
            return await _unconfirmed(run)
    if failure is not None and failure.reason != Aborted.reason:
        return failure  # refused: nothing took effect anywhere
    if failure is not None:
        # Re-sent after a restart and refused by the barrier: the services ran the
        # saga without us and already undid this step.
        await run.change(
            Change(
                kind=Kind.COMPENSATION_DONE,
                at=run.runner.clock(),
                step=failure.step,
                step_status=StepStatus.COMPENSATED,
                detail="compensated by the services while the coordinator was down",
            )
        )
    # The services may have finished the saga while this step was unconfirmed; then
    # no further event will come to settle it.
    await _settle_observed(run)
    return None


async def _unconfirmed(run: SagaRun) -> Failure | None:
    """The first steps are unconfirmed past the deadline: they took effect if the
    services ran the steps after them (the services carry the saga on), or else the
    saga compensates them (the Failure returned)."""
    await run.flush()
    logged = await run.runner.log.load(run.record.saga_id)
    assert logged is not None  # sagas are never deleted
    run.record = logged  # with what the observer recorded meanwhile
    now = run.runner.clock()
    unconfirmed = [
        s
        for s in run.definition.roots
        if logged.step(s.name).status not in (StepStatus.SUCCEEDED, StepStatus.REJECTED)
    ]
    if all(ran_past(run.definition, logged, s.name) for s in unconfirmed):
        for step in unconfirmed:
            await run.change(
                Change(
                    kind=Kind.STEP_SUCCEEDED,
                    at=now,
                    step=step.name,
                    step_status=StepStatus.SUCCEEDED,
                    interrupt_open_attempts=True,
                    detail="took effect: the services ran the steps after it",
                )
            )
        await _settle_observed(run)
        return None
    first = unconfirmed[0]
    failure = Failure(
        step=first.name,
        code="DEADLINE_EXCEEDED",
        reason=NOT_STARTED,
        message=_not_started(run.definition.deadline, logged, first.name),
    )
    log.warning(
        "choreography not started before the deadline saga_id=%s: %s",
        logged.saga_id,
        failure.describe(),
    )
    for step in unconfirmed:
        await run.change(
            Change(
                kind=Kind.STEP_FAILED,
                at=now,
                step=step.name,
                step_status=StepStatus.FAILED,
                # An attempt the deadline cut short: its outcome is unknown too.
                interrupt_open_attempts=True,
                detail=f"outcome unknown: {failure.describe()}",
            )
        )
    return failure


def _not_started(deadline: float, record: SagaRecord, step: str) -> str:
    last = failure_of(record, step)
    why = f"not confirmed within the saga's deadline ({deadline:g}s)"
    if last.code == "UNKNOWN":  # no attempt ended with an error
        return why
    return f"{why}; last error {last.reason or last.code}: {last.message}"


async def _settle_observed(run: SagaRun) -> None:
    """Settle the saga if the events observed so far end it; the run then ends with
    the saga as logged (the observer's changes too)."""
    saga_id = run.record.saga_id
    await run.flush()  # nothing is deferred in choreography; the log is the record
    logged = await run.runner.log.load(saga_id)
    assert logged is not None  # sagas are never deleted
    settled = settlement(logged, run.runner.clock())
    if settled is not None:
        try:
            await run.runner.log.append(saga_id, settled)
            logged, _ = apply(logged, settled)
        except StatusConflict:  # the observer settled it first: read what it wrote
            reloaded = await run.runner.log.load(saga_id)
            assert reloaded is not None
            logged = reloaded
    run.record = logged
