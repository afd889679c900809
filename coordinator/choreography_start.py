"""How the coordinator starts a choreographed saga: it runs only the first step(s).

The services' reactions to each other's events carry the saga on from there, and
the observer (coordinator/observer.py) follows the rest and settles the saga.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common.errors import Aborted
from coordinator.observation import settlement
from coordinator.plan import carried_by_services
from coordinator.records import Change, Failure, Kind, StepStatus, apply
from coordinator.store import StatusConflict

if TYPE_CHECKING:
    from coordinator.runner import SagaRun

log = logging.getLogger(__name__)


async def start_choreography(run: SagaRun) -> Failure | None:
    """Run the first step(s); a Failure means the saga must compensate.

    The first step is retried until the participant answers, within the saga's
    deadline: once it took effect the flow runs without us, so an unknown outcome
    must not be compensated from here. A refusal ends the saga (nothing took
    effect anywhere).
    """
    if carried_by_services(run.definition, run.record):
        return None
    remaining = (run.record.deadline - run.runner.clock()).total_seconds()
    try:
        async with asyncio.timeout(max(remaining, 0.0)):
            failure = await run.run_steps(run.definition.roots, forward_only=True)
    except TimeoutError:
        log.warning("choreography not started before the deadline saga_id=%s", run.record.saga_id)
        return None  # left running; the observer flags it as stalled
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
