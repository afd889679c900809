"""The runner: the only interpreter of saga definitions.

It drives one saga from its logged state to a settled one, writing every
transition to the saga log *before* acting on it:

1. **Forward, compensable phase** (under the saga's deadline): each step starts
   once the steps it runs ``after`` succeeded, so independent steps run at the
   same time (one ``asyncio.TaskGroup``). Each step is one call through the
   policy (retry around breaker around RPC); every attempt is logged before it
   is sent and recorded when it ends (:meth:`SagaRun.attempt`).
2. A rejection, a step whose retries ran out (its outcome is unknown), or the
   deadline stops the phase: the saga turns **backwards** and every step that
   may have taken effect is compensated, each once all the steps that ran after
   it are undone (reverse dependency order). Compensations are retried within
   their budget; when it runs out the saga *needs attention* and keeps its place
   for ``RetrySaga``; the other compensations still run (coordinator/engine/compensation.py).
3. Once every compensable step (the pivot included) succeeded, the
   **forward-only** steps run and are retried until they succeed (forward
   recovery); the deadline no longer applies.

A choreographed saga's run makes only its first step(s) and leaves the rest to the
services (coordinator/engine/choreography_start.py).

The same code resumes a saga after a crash: steps already succeeded are
skipped, in-flight ones are re-sent with the same key (saga id + step), which
the participants' barrier turns into a replay.

Fewer, larger writes, each still before the action it allows: a step's intent
is written together with the result that lets it start (the first steps' with
the saga itself; coordinator/engine/plan.py says which), and an orchestrated step's
result, unless it is the pivot's, may wait for the saga's next write. A happy
``place_order`` takes five writes.

Telemetry (coordinator/engine/telemetry.py): :meth:`SagaRunner.run` opens the saga
span and records the saga's end; :meth:`SagaRun.attempt`, the one place where a
step attempt or compensation attempt starts and ends, opens a child span per
attempt, current while the participant is called, so the gRPC call nests under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from functools import partial

from opentelemetry.context import Context

from common.errors import BusinessRejection, SagawireError
from common.policy import AttemptSlot, CallPolicy
from common.store import utc_now
from contract.definitions import Definitions, SagaDefinition, SagaMode, Step
from coordinator.engine.choreography_start import start_choreography
from coordinator.engine.compensation import compensate_all
from coordinator.engine.crash import NO_CRASH, CrashHook
from coordinator.engine.outcomes import (
    StepFailed,
    barrier_outcome,
    error_detail,
    failed_attempt,
)
from coordinator.engine.participants import ParticipantClient
from coordinator.engine.payloads import step_request
from coordinator.engine.plan import (
    all_succeeded,
    carried_by_services,
    failure_of,
    intent,
    logged_open,
    unblocked_by,
)
from coordinator.engine.telemetry import CarriedSpans, RunCause, SagaTelemetry
from coordinator.log.records import (
    UNFINISHED,
    AttemptChange,
    Change,
    Direction,
    Failure,
    Kind,
    Outcome,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
)
from coordinator.log.saga_log import SagaLog
from protos.sagawire.v1 import participant_pb2

log = logging.getLogger(__name__)


# Runs that pick up a saga whose last run ended early log that first (its open attempts
# were interrupted).
_RESUMED_DETAIL = {
    RunCause.RECOVERED: "resumed by recovery",
    RunCause.REDRIVEN: "resumed after an unexpected error stopped its last run",
}


class SagaRunner:
    """Runs sagas of the given definitions through the policy, logging as it goes."""

    def __init__(
        self,
        saga_log: SagaLog,
        definitions: Definitions,
        participants: ParticipantClient,
        policy: CallPolicy,
        crash: CrashHook = NO_CRASH,
        clock: Callable[[], datetime] = utc_now,
        carried: CarriedSpans | None = None,
    ) -> None:
        self.log = saga_log
        self.definitions = definitions
        self.participants = participants
        self.policy = policy
        self.crash = crash
        self.clock = clock
        # Spans of choreographed sagas the services carry on, ended by the observer.
        self.carried = carried

    async def run(
        self,
        record: SagaRecord,
        cause: RunCause = RunCause.STARTED,
        context: Context | None = None,
    ) -> SagaRecord:
        """Drive the saga until it is completed, compensated or needs attention.

        Args:
            record: the saga as logged.
            cause: why it runs now; a recovered or re-driven saga first logs that it resumed.
            context: the trace context of the call that started (or retried) it.
        """
        definition = self.definitions.get(record.definition)
        if definition is None:
            raise LookupError(f"saga {record.saga_id}: no definition {record.definition!r}")
        telemetry = SagaTelemetry(record, cause, context)
        run = SagaRun(self, definition, record, telemetry)
        with telemetry.current():
            resumed = _RESUMED_DETAIL.get(cause)
            if resumed is not None:
                await run.change(
                    Change(
                        kind=Kind.SAGA_RESUMED,
                        at=self.clock(),
                        interrupt_open_attempts=True,
                        detail=resumed,
                    )
                )
            settled = await run.drive()
            telemetry.finished(settled, self.clock())
            if (
                self.carried is not None
                and settled.status in UNFINISHED
                and carried_by_services(definition, settled)
            ):
                telemetry.hand_over(self.carried)
        return settled


class SagaRun:
    """One saga being driven: its definition and its record, kept in step with the log.

    The forward phase is here; the backward phase and the choreography start are
    functions of their own modules that drive a run through the same methods."""

    def __init__(
        self,
        runner: SagaRunner,
        definition: SagaDefinition,
        record: SagaRecord,
        telemetry: SagaTelemetry,
    ) -> None:
        self.runner = runner
        self.definition = definition
        self.record = record
        self.telemetry = telemetry
        # Changes applied to the record but not yet written: see change(defer=True).
        self._unwritten: list[Change] = []

    async def change(self, change: Change, defer: bool = False) -> None:
        """Log a change (durably), keeping the in-memory record in step.

        ``defer`` keeps it to be written with this saga's next change, in one commit.
        Only for what may be lost in a crash: a step's result, which recovery gets
        again by re-sending the step (the barrier replays it). The next change, written
        before anything acts on the result, carries it to disk first.
        """
        # Applied before awaiting so concurrent steps see the order the log will have.
        self.record, _ = apply(self.record, change)
        self._unwritten.append(change)
        if not defer:
            await self.flush()

    async def flush(self) -> None:
        """Write the deferred changes (in order, in one commit)."""
        if not self._unwritten:
            return
        # Taken and queued without an await between: concurrent flushes keep the order.
        batch, self._unwritten = self._unwritten, []
        await self.runner.log.append_many(self.record.saga_id, batch)

    async def drive(self) -> SagaRecord:
        if self.record.direction is Direction.FORWARD:
            choreographed = self.record.mode == SagaMode.CHOREOGRAPHY.value
            failure = await (start_choreography(self) if choreographed else self.forward())
            if failure is None:
                return self.record
            await self.change(
                Change(
                    kind=Kind.SAGA_COMPENSATING,
                    at=self.runner.clock(),
                    saga_status=SagaStatus.COMPENSATING,
                    direction=Direction.BACKWARD,
                    failure=failure,
                    # A refused choreography start left no attempt open to close.
                    interrupt_open_attempts=not choreographed,
                    detail=failure.describe(),
                )
            )
        await compensate_all(self)
        return self.record

    # -- forward -----------------------------------------------------------------------

    async def forward(self) -> Failure | None:
        """Run the steps; a Failure means the saga must compensate."""
        compensable = self.definition.compensable
        if not all_succeeded(self.record, compensable):
            remaining = (self.record.deadline - self.runner.clock()).total_seconds()
            failure: Failure | None = None
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    failure = await self.run_steps(compensable, forward_only=False)
            except TimeoutError:
                if not all_succeeded(self.record, compensable):
                    failure = Failure(
                        step="",
                        code="DEADLINE_EXCEEDED",
                        reason="SAGA_DEADLINE_EXCEEDED",
                        message=f"not finished within {self.definition.deadline:g}s",
                    )
                    await self.change(
                        Change(
                            kind=Kind.SAGA_DEADLINE_EXCEEDED,
                            at=self.runner.clock(),
                            detail=failure.message,
                        )
                    )
            if failure is not None:
                return failure
        failure = await self.run_steps(self.definition.forward, forward_only=True)
        now = self.runner.clock()
        if failure is not None:
            await self.change(
                Change(
                    kind=Kind.SAGA_NEEDS_ATTENTION,
                    at=now,
                    saga_status=SagaStatus.NEEDS_ATTENTION,
                    failure=failure,
                    detail=f"forward recovery stopped: {failure.describe()}",
                )
            )
        else:
            await self.change(
                Change(kind=Kind.SAGA_COMPLETED, at=now, saga_status=SagaStatus.COMPLETED)
            )
        return None

    async def run_steps(self, steps: Sequence[Step], forward_only: bool) -> Failure | None:
        """Run the steps as a DAG; the first failure cancels the rest and is returned."""
        done = {s.name: asyncio.Event() for s in self.definition.steps}
        for name, event in done.items():
            if self.record.step(name).status is StepStatus.SUCCEEDED:
                event.set()
        failure: Failure | None = None
        try:
            async with asyncio.TaskGroup() as group:
                for step in steps:
                    if not done[step.name].is_set():
                        group.create_task(self.run_step(step, done, forward_only))
        except* StepFailed as failed:
            first = failed.exceptions[0]
            assert isinstance(first, StepFailed)
            failure = first.failure
        return failure

    async def run_step(
        self, step: Step, done: dict[str, asyncio.Event], forward_only: bool
    ) -> None:
        for dependency in step.after:
            await done[dependency].wait()
        current = self.record.step(step.name)
        if current.status in (StepStatus.REJECTED, StepStatus.FAILED) and not forward_only:
            raise StepFailed(failure_of(self.record, step.name))  # decided before a restart
        await self.execute(step, forward_only)
        done[step.name].set()

    async def execute(self, step: Step, forward_only: bool) -> None:
        attempts = self.record.step(step.name).attempts_of(Phase.EXECUTE)
        # An attempt still open here was logged with the saga (first_intents) and not
        # made yet: it is the first one this run makes. (A resumed run has closed every
        # open attempt as interrupted.)
        opened = bool(attempts) and attempts[-1].outcome is None
        if forward_only:
            policy = replace(step.retry, max_attempts=0)  # until it succeeds
        else:
            ended = sum(1 for a in attempts if a.outcome not in (None, Outcome.INTERRUPTED))
            policy = replace(step.retry, max_attempts=max(1, step.retry.max_attempts - ended))
        try:
            await self.runner.policy.call(
                step.participant,
                policy,
                partial(self.send, step, Phase.EXECUTE),
                scope=partial(self.attempt, step, Phase.EXECUTE),
                first_number=len(attempts) if opened else len(attempts) + 1,
                on_retry=partial(self.telemetry.retrying, step, Phase.EXECUTE),
            )
        except BusinessRejection as rejection:
            raise StepFailed(
                Failure(step.name, "FAILED_PRECONDITION", rejection.reason, rejection.message)
            ) from None
        except SagawireError as error:
            detail = error_detail(error)
            failure = Failure(step.name, detail.code, detail.reason, detail.message)
            if not forward_only:
                await self.change(
                    Change(
                        kind=Kind.STEP_FAILED,
                        at=self.runner.clock(),
                        step=step.name,
                        step_status=StepStatus.FAILED,
                        detail=f"outcome unknown: {failure.describe()}",
                    )
                )
            raise StepFailed(failure) from None

    async def send(self, step: Step, phase: Phase, deadline: float) -> participant_pb2.StepReply:
        request = step_request(self.definition, self.record, step, phase)
        participants = self.runner.participants
        if phase is Phase.EXECUTE:
            return await participants.execute(step.participant, request, deadline)
        return await participants.compensate(step.participant, request, deadline)

    @asynccontextmanager
    async def attempt(
        self, step: Step, phase: Phase, number: int
    ) -> AsyncIterator[AttemptSlot[participant_pb2.StepReply]]:
        """One attempt of a step (or of its compensation): logged before, recorded after.

        Its span is current for the whole attempt, the participant's call included.
        """
        execute = phase is Phase.EXECUTE
        prefix = "" if execute else "compensate_"
        with self.telemetry.attempt(step, phase, number) as traced:
            if not logged_open(self.record, step.name, phase, number):
                await self.change(intent(step, phase, number, self.runner.clock()))
            self.runner.crash(f"after_{prefix}intent", step.name)
            slot: AttemptSlot[participant_pb2.StepReply] = AttemptSlot()
            try:
                yield slot
            except SagawireError as error:
                self.runner.crash(f"after_{prefix}call", step.name)
                failed = failed_attempt(step.name, phase, number, error, self.runner.clock())
                assert failed.attempt is not None
                traced.ended(failed.attempt)
                await self.change(failed)
                raise
            self.runner.crash(f"after_{prefix}call", step.name)
            reply = slot.value
            assert reply is not None  # the policy fills the slot before a normal exit
            ended = AttemptChange(phase, number, Outcome.OK)
            barrier = barrier_outcome(reply)
            traced.ended(ended, barrier)
            # An orchestrated step's result can wait for the saga's next change (the
            # next step's intent, or the outcome), which always follows; if a crash
            # loses it, recovery re-sends the step and the barrier replays the result.
            # Not the pivot's: once it succeeded the log must say so at once, or a
            # recovery past the deadline would compensate it. Nor a choreographed
            # saga's: the observer reads the log, not this record.
            defer = execute and not step.pivot and self.record.mode == SagaMode.ORCHESTRATION.value
            if execute:
                change = Change(
                    kind=Kind.STEP_SUCCEEDED,
                    at=self.runner.clock(),
                    step=step.name,
                    attempt=ended,
                    step_status=StepStatus.SUCCEEDED,
                    result=reply.result.SerializeToString(),
                    detail=barrier,
                )
            else:
                change = Change(
                    kind=Kind.COMPENSATION_DONE,
                    at=self.runner.clock(),
                    step=step.name,
                    attempt=ended,
                    step_status=StepStatus.COMPENSATED,
                    detail=barrier,
                )
            await self.change(change, defer=True)
            # The steps this result lets start are logged with it, in the same commit:
            # they start as soon as this attempt ends.
            unblocked = unblocked_by(self.definition, self.record, step) if execute else ()
            for ready in unblocked:
                number = len(self.record.step(ready.name).attempts_of(Phase.EXECUTE)) + 1
                await self.change(intent(ready, Phase.EXECUTE, number, self.runner.clock()), True)
            if unblocked or not defer:
                await self.flush()
