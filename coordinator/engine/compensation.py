"""The backward phase of a saga run: undo what may have taken effect.

Every compensable step that may have taken effect is compensated, each once all
the steps that ran after it are undone (reverse dependency order), within its
retry budget for this round. When a budget runs out the saga *needs attention*
and keeps its place for ``RetrySaga``; the other compensations still run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from common.errors import SagawireError
from contract.definitions import Step
from coordinator.engine.outcomes import needs_compensation
from coordinator.engine.plan import descendants
from coordinator.log.records import Change, Kind, Outcome, Phase, SagaStatus, StepStatus

if TYPE_CHECKING:
    from coordinator.engine.runner import SagaRun

log = logging.getLogger(__name__)


async def compensate_all(run: SagaRun) -> None:
    """Compensate what may have taken effect, then log the saga compensated, or needing
    attention if a compensation could not be done."""
    undo = [s for s in run.definition.compensable if needs_compensation(run.record.step(s.name))]
    names = {s.name for s in undo}
    loop = asyncio.get_running_loop()
    results: dict[str, asyncio.Future[bool]] = {s.name: loop.create_future() for s in undo}
    async with asyncio.TaskGroup() as group:
        for step in undo:
            later = [n for n in descendants(run.definition, step.name) if n in names]
            group.create_task(_compensate_after(run, step, later, results))
    stuck = sorted(name for name, ok in results.items() if not ok.result())
    now = run.runner.clock()
    if stuck:
        await run.change(
            Change(
                kind=Kind.SAGA_NEEDS_ATTENTION,
                at=now,
                saga_status=SagaStatus.NEEDS_ATTENTION,
                detail=f"compensation not done for: {', '.join(stuck)}",
            )
        )
    else:
        await run.change(
            Change(kind=Kind.SAGA_COMPENSATED, at=now, saga_status=SagaStatus.COMPENSATED)
        )


async def _compensate_after(
    run: SagaRun, step: Step, later: Sequence[str], results: dict[str, asyncio.Future[bool]]
) -> None:
    """Compensate ``step`` once every step that ran after it is undone."""
    for name in later:
        if not await asyncio.shield(results[name]):
            log.warning(
                "compensation blocked saga_id=%s step=%s waits_for=%s",
                run.record.saga_id,
                step.name,
                name,
            )
            results[step.name].set_result(False)
            return
    results[step.name].set_result(await _compensate(run, step))


async def _compensate(run: SagaRun, step: Step) -> bool:
    """Compensate within the budget of this round; False if it could not be done."""
    if run.record.step(step.name).status is StepStatus.COMPENSATED:
        return True
    attempts = run.record.step(step.name).attempts_of(Phase.COMPENSATE)
    ended = sum(
        1
        for a in attempts
        if a.round == run.record.round and a.outcome not in (None, Outcome.INTERRUPTED)
    )
    remaining = step.compensation_retry.max_attempts - ended
    if remaining <= 0:
        return False
    try:
        await run.runner.policy.call(
            step.participant,
            replace(step.compensation_retry, max_attempts=remaining),
            partial(run.send, step, Phase.COMPENSATE),
            scope=partial(run.attempt, step, Phase.COMPENSATE),
            first_number=len(attempts) + 1,
            on_retry=partial(run.telemetry.retrying, step, Phase.COMPENSATE),
        )
    except SagawireError as error:
        log.warning(
            "compensation gave up saga_id=%s step=%s error=%s",
            run.record.saga_id,
            step.name,
            error,
        )
        return False
    return True
