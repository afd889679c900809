"""The runner: the only interpreter of saga definitions, read straight through.

It drives one saga from its logged state to a settled one, writing every
transition to the saga log *before* acting on it. One step attempt reads::

    async for attempt in policy.attempts(participant, retry):  # backoff, budget
        async with attempt:                  # a bulkhead slot, the breaker's admission
            log the intent                   # before the call
            with attempt.counted():          # the breaker counts the outcome
                reply = await participant.execute(request, attempt.timeout)
            log the result                   # (or the failure, on an error)

1. **Forward, compensable phase** (:meth:`SagaRun.forward`, under the saga's
   deadline): each step starts once the steps it runs ``after`` succeeded, so
   independent steps run at the same time (one ``asyncio.TaskGroup``).
2. A rejection, a step whose retries ran out (its outcome is unknown), or the
   deadline stops the phase: the saga turns **backwards**
   (:meth:`SagaRun.compensate_all`) and every step that may have taken effect is
   compensated, each once all the steps that ran after it are undone (reverse
   dependency order). Compensations are retried within their budget; when it runs
   out the saga *needs attention* and keeps its place for ``RetrySaga``; the other
   compensations still run.
3. Once every compensable step (the pivot included) succeeded, the
   **forward-only** steps run and are retried until they succeed (forward
   recovery); the deadline no longer applies.

A choreographed saga's run makes only its first step(s) and leaves the rest to the
services (:meth:`SagaRun.start_choreography`): the services' reactions carry the
saga on, and the observer (coordinator/choreography/observer.py) follows the rest
and settles it. A start never leaves a saga hanging: the first steps are retried
until the saga's deadline (a saga resumed past it gets one ordinary retry budget);
if they are still unconfirmed then, the services' events may show they took effect
anyway (a later step ran: the replies were lost), and the services carry the saga
on; otherwise the saga compensates them, through the barrier, which turns "never
arrived" into a null compensation and refuses the execute if it arrives late.

The same code resumes a saga after a crash: steps already succeeded are
skipped, in-flight ones are re-sent with the same key (saga id + step), which
the participants' barrier turns into a replay.

Fewer, larger writes, each still before the action it allows: a step's intent
is written together with the result that lets it start (the first steps' with
the saga itself; coordinator/engine/plan.py says which), and an orchestrated step's
result, unless it is the pivot's, may wait for the saga's next write. A happy
``place_order`` takes five writes.

One record in memory: the run's :class:`~coordinator.log.saga_log.LiveRecord`. Each
change is applied to it, then written; readers are shown a durable change once its
write returned and a deferred one at once. An orchestrated saga's live record is pinned
in the log for the run's lifetime (:meth:`SagaLog.pin`): GetSaga, WatchSaga and
PlaceOrder read it there, and the SQLite log keeps no copy of its own. A choreographed
saga is written by the observer too, so the log holds its one record and the run keeps
no version of its own: it applies a change to the version it last read, writes it, and
then holds the log's (on SQLite the record its cache serves, the same object), reading
it again when the observer wrote in between and before it decides from what the
services did.

Telemetry (coordinator/engine/telemetry.py): :meth:`SagaRunner.run` opens the saga
span and records the saga's end; :meth:`SagaRun.call`, the one place where a step
attempt or compensation attempt starts and ends, opens one span per attempt,
current while the participant is called, which is also that call's client span.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import replace
from datetime import datetime
from functools import partial

from opentelemetry.context import Context

from common.errors import Aborted, BusinessRejection, SagawireError
from common.policy import CallPolicy, ParticipantAttempt, RetryPolicy
from common.store import utc_now
from contract.definitions import Definitions, SagaDefinition, SagaMode, Step
from coordinator.choreography.observation import settlement
from coordinator.engine.crash import NO_CRASH, CrashHook
from coordinator.engine.outcomes import (
    StepFailed,
    barrier_outcome,
    error_detail,
    failed_attempt,
    needs_compensation,
)
from coordinator.engine.participants import ParticipantClient
from coordinator.engine.payloads import step_request
from coordinator.engine.plan import (
    all_succeeded,
    carried_by_services,
    descendants,
    failure_of,
    intent,
    logged_open,
    ran_past,
    unblocked_by,
)
from coordinator.engine.telemetry import AttemptTrace, CarriedSpans, RunCause, SagaTelemetry
from coordinator.log.records import (
    UNFINISHED,
    AttemptChange,
    AttemptOutcome,
    Change,
    Direction,
    Failure,
    Kind,
    Phase,
    SagaRecord,
    SagaStatus,
    StepStatus,
    apply,
)
from coordinator.log.saga_log import LiveRecord, SagaLog, StatusConflict
from protos.sagawire.v1 import participant_pb2

log = logging.getLogger(__name__)

# Why a choreographed saga whose first steps stayed unconfirmed is compensated.
NOT_STARTED = "SAGA_DEADLINE_EXCEEDED"


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
        live = LiveRecord(record)
        run = SagaRun(self, definition, live, telemetry)
        # An orchestrated saga has no other writer: its run's record is the one readers
        # of the log are served. The observer writes a choreographed one too.
        orchestrated = record.mode == SagaMode.ORCHESTRATION.value
        pinned = self.log.pin(live) if orchestrated else nullcontext()
        with pinned, telemetry.current():
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
    """One saga being driven: its definition and its :class:`LiveRecord`.

    An orchestrated saga's live record is its one in-memory record: every change is
    applied to it first, then written (:meth:`change`), and shown to readers once the
    write allows (it is pinned in the log, which serves reads from it). A choreographed
    saga's holds only versions the log has (:meth:`_write_on_logged`)."""

    def __init__(
        self,
        runner: SagaRunner,
        definition: SagaDefinition,
        live: LiveRecord,
        telemetry: SagaTelemetry,
    ) -> None:
        self.runner = runner
        self.definition = definition
        self.live = live
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
        if self.observed:
            await self._write_on_logged(change)
            return
        # Applied before awaiting so concurrent steps see the order the log will have.
        self.live.apply(change)
        self._unwritten.append(change)
        if not defer:
            await self.flush()

    @property
    def observed(self) -> bool:
        """Whether the observer writes this saga too (a choreographed one)."""
        return self.record.mode == SagaMode.CHOREOGRAPHY.value

    async def _write_on_logged(self, change: Change) -> None:
        """Write ``change`` to a saga the observer writes too. The log holds its one record
        and the run no version of its own: the change is applied to the version last read
        and written; that is the log's version now, shared with its cache, unless the
        observer wrote in between (then the log's is read)."""
        planned, _ = apply(self.record, change)
        written = await self.runner.log.append_many(self.record.saga_id, [change], planned)
        if written[-1].seq == planned.last_seq:
            self.live.reloaded(planned)
        else:
            await self.reload()

    async def reload(self) -> None:
        """Take the saga as the log has it, with what the observer recorded meanwhile."""
        logged = await self.runner.log.load(self.record.saga_id)
        assert logged is not None  # sagas are never deleted
        self.live.reloaded(logged)

    @property
    def record(self) -> SagaRecord:
        """The saga as this run has it: every change applied, written or not (a
        choreographed saga's: the version the log has, as last read or written)."""
        return self.live.record

    async def flush(self) -> None:
        """Write the deferred changes (in order, in one commit); readers see them once
        the log call returns (durable, or queued if replayable)."""
        if not self._unwritten:
            return
        # Taken and queued without an await between: concurrent flushes keep the order.
        batch, self._unwritten = self._unwritten, []
        with self.live.writing():
            if self._replayable(batch):
                await self.runner.log.append_later(self.record.saga_id, batch)
            else:
                await self.runner.log.append_many(self.record.saga_id, batch)

    def _replayable(self, batch: Sequence[Change]) -> bool:
        """Whether a crash may lose ``batch`` (the log writes it in the background): an
        orchestrated saga's calls replay through the barrier, but not past the pivot's
        success, after which forward-only steps run and recovery must not compensate.
        (A choreographed saga's log is what the observer reads; the log makes outcomes
        durable whatever it is asked.)"""
        if self.record.mode != SagaMode.ORCHESTRATION.value:
            return False
        return not any(
            c.kind is Kind.STEP_SUCCEEDED and self.definition.step(c.step).pivot for c in batch
        )

    async def drive(self) -> SagaRecord:
        if self.record.direction is Direction.FORWARD:
            choreographed = self.record.mode == SagaMode.CHOREOGRAPHY.value
            failure = await (self.start_choreography() if choreographed else self.forward())
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
        await self.compensate_all()
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
            retry = replace(step.retry, max_attempts=0)  # until it succeeds
        else:
            ended = sum(1 for a in attempts if a.outcome not in (None, AttemptOutcome.INTERRUPTED))
            retry = replace(step.retry, max_attempts=max(1, step.retry.max_attempts - ended))
        first = len(attempts) if opened else len(attempts) + 1
        try:
            await self.call(step, Phase.EXECUTE, retry, first)
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

    async def call(
        self, step: Step, phase: Phase, retry: RetryPolicy, first_number: int
    ) -> participant_pb2.StepReply:
        """Execute or compensate a step: every attempt logged before it is made and
        recorded when it ends, its span current while the participant is called."""
        prefix = "" if phase is Phase.EXECUTE else "compensate_"
        on_retry = partial(self.telemetry.retrying, step, phase)
        async for attempt in self.runner.policy.attempts(
            step.participant, retry, first_number, on_retry
        ):
            async with attempt:
                with self.telemetry.attempt(step, phase, attempt.number) as traced:
                    if not logged_open(self.record, step.name, phase, attempt.number):
                        await self.change(intent(step, phase, attempt.number, self.runner.clock()))
                    self.runner.crash(f"after_{prefix}intent", step.name)
                    request = step_request(self.definition, self.record, step, phase)
                    try:
                        with attempt.counted():
                            reply = await self.send(step.participant, phase, request, attempt)
                    except SagawireError as error:
                        self.runner.crash(f"after_{prefix}call", step.name)
                        now = self.runner.clock()
                        failed = failed_attempt(step.name, phase, attempt.number, error, now)
                        assert failed.attempt is not None
                        traced.ended(failed.attempt)
                        await self.change(failed)
                        raise
                    self.runner.crash(f"after_{prefix}call", step.name)
                    await self.record_reply(step, phase, attempt.number, reply, traced)
                    return reply
        raise AssertionError("unreachable: the attempts either return or raise")

    async def send(
        self,
        participant: str,
        phase: Phase,
        request: participant_pb2.StepRequest,
        attempt: ParticipantAttempt,
    ) -> participant_pb2.StepReply:
        participants = self.runner.participants
        if phase is Phase.EXECUTE:
            return await participants.execute(participant, request, attempt.timeout)
        return await participants.compensate(participant, request, attempt.timeout)

    async def record_reply(
        self,
        step: Step,
        phase: Phase,
        number: int,
        reply: participant_pb2.StepReply,
        traced: AttemptTrace,
    ) -> None:
        """Log a step's result (or its compensation's), with the steps it lets start."""
        execute = phase is Phase.EXECUTE
        ended = AttemptChange(phase, number, AttemptOutcome.OK)
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
            next_number = len(self.record.step(ready.name).attempts_of(Phase.EXECUTE)) + 1
            await self.change(intent(ready, Phase.EXECUTE, next_number, self.runner.clock()), True)
        if unblocked or not defer:
            await self.flush()

    # -- backward ----------------------------------------------------------------------

    async def compensate_all(self) -> None:
        """Compensate what may have taken effect, then log the saga compensated, or needing
        attention if a compensation could not be done."""
        undo = [
            s for s in self.definition.compensable if needs_compensation(self.record.step(s.name))
        ]
        names = {s.name for s in undo}
        loop = asyncio.get_running_loop()
        results: dict[str, asyncio.Future[bool]] = {s.name: loop.create_future() for s in undo}
        async with asyncio.TaskGroup() as group:
            for step in undo:
                later = [n for n in descendants(self.definition, step.name) if n in names]
                group.create_task(self.compensate_after(step, later, results))
        stuck = sorted(name for name, ok in results.items() if not ok.result())
        now = self.runner.clock()
        if stuck:
            await self.change(
                Change(
                    kind=Kind.SAGA_NEEDS_ATTENTION,
                    at=now,
                    saga_status=SagaStatus.NEEDS_ATTENTION,
                    detail=f"compensation not done for: {', '.join(stuck)}",
                )
            )
        else:
            await self.change(
                Change(kind=Kind.SAGA_COMPENSATED, at=now, saga_status=SagaStatus.COMPENSATED)
            )

    async def compensate_after(
        self, step: Step, later: Sequence[str], results: dict[str, asyncio.Future[bool]]
    ) -> None:
        """Compensate ``step`` once every step that ran after it is undone."""
        for name in later:
            if not await asyncio.shield(results[name]):
                log.warning(
                    "compensation blocked saga_id=%s step=%s waits_for=%s",
                    self.record.saga_id,
                    step.name,
                    name,
                )
                results[step.name].set_result(False)
                return
        results[step.name].set_result(await self.compensate(step))

    async def compensate(self, step: Step) -> bool:
        """Compensate within the budget of this round; False if it could not be done."""
        if self.record.step(step.name).status is StepStatus.COMPENSATED:
            return True
        attempts = self.record.step(step.name).attempts_of(Phase.COMPENSATE)
        ended = sum(
            1
            for a in attempts
            if a.round == self.record.round and a.outcome not in (None, AttemptOutcome.INTERRUPTED)
        )
        remaining = step.compensation_retry.max_attempts - ended
        if remaining <= 0:
            return False
        try:
            retry = replace(step.compensation_retry, max_attempts=remaining)
            await self.call(step, Phase.COMPENSATE, retry, len(attempts) + 1)
        except SagawireError as error:
            log.warning(
                "compensation gave up saga_id=%s step=%s error=%s",
                self.record.saga_id,
                step.name,
                error,
            )
            return False
        return True

    # -- choreography start ------------------------------------------------------------

    async def start_choreography(self) -> Failure | None:
        """Run the first step(s); a Failure means the saga must compensate.

        The first step is retried until the participant answers, within the saga's
        deadline: once it took effect the flow runs without us. A refusal ends the saga
        (nothing took effect anywhere); so does a first step left unconfirmed past the
        deadline that the services show no sign of (see the module docstring).
        """
        if carried_by_services(self.definition, self.record):
            return None
        roots = self.definition.roots
        remaining = (self.record.deadline - self.runner.clock()).total_seconds()
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    failure = await self.run_steps(roots, forward_only=True)
            except TimeoutError:
                return await self.unconfirmed()
        else:
            # Resumed (or retried) past the deadline: the first steps were in flight when
            # the coordinator stopped and may have taken effect, so they are sent again,
            # once, with an ordinary retry budget; the barrier replays what took effect.
            failure = await self.run_steps(roots, forward_only=False)
            if any(self.record.step(s.name).status is StepStatus.FAILED for s in roots):
                return await self.unconfirmed()
        if failure is not None and failure.reason != Aborted.reason:
            return failure  # refused: nothing took effect anywhere
        if failure is not None:
            # Re-sent after a restart and refused by the barrier: the services ran the
            # saga without us and already undid this step.
            await self.change(
                Change(
                    kind=Kind.COMPENSATION_DONE,
                    at=self.runner.clock(),
                    step=failure.step,
                    step_status=StepStatus.COMPENSATED,
                    detail="compensated by the services while the coordinator was down",
                )
            )
        # The services may have finished the saga while this step was unconfirmed; then
        # no further event will come to settle it.
        await self.settle_observed()
        return None

    async def unconfirmed(self) -> Failure | None:
        """The first steps are unconfirmed past the deadline: they took effect if the
        services ran the steps after them (the services carry the saga on), or else the
        saga compensates them (the Failure returned)."""
        await self.reload()
        logged = self.record
        now = self.runner.clock()
        unconfirmed = [
            s
            for s in self.definition.roots
            if logged.step(s.name).status not in (StepStatus.SUCCEEDED, StepStatus.REJECTED)
        ]
        if all(ran_past(self.definition, logged, s.name) for s in unconfirmed):
            for step in unconfirmed:
                await self.change(
                    Change(
                        kind=Kind.STEP_SUCCEEDED,
                        at=now,
                        step=step.name,
                        step_status=StepStatus.SUCCEEDED,
                        interrupt_open_attempts=True,
                        detail="took effect: the services ran the steps after it",
                    )
                )
            await self.settle_observed()
            return None
        first = unconfirmed[0]
        failure = Failure(
            step=first.name,
            code="DEADLINE_EXCEEDED",
            reason=NOT_STARTED,
            message=_not_started(self.definition.deadline, logged, first.name),
        )
        log.warning(
            "choreography not started before the deadline saga_id=%s: %s",
            logged.saga_id,
            failure.describe(),
        )
        for step in unconfirmed:
            await self.change(
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

    async def settle_observed(self) -> None:
        """Settle the saga if the events observed so far end it; the run then ends with
        the saga as logged (the observer's changes too)."""
        await self.reload()
        settled = settlement(self.record, self.runner.clock())
        if settled is not None:
            try:
                await self.change(settled)
            except StatusConflict:  # the observer settled it first: read what it wrote
                await self.reload()


def _not_started(deadline: float, record: SagaRecord, step: str) -> str:
    last = failure_of(record, step)
    why = f"not confirmed within the saga's deadline ({deadline:g}s)"
    if last.code == "UNKNOWN":  # no attempt ended with an error
        return why
    return f"{why}; last error {last.reason or last.code}: {last.message}"
