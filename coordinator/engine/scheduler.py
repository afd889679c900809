"""The engine: starts, resumes and retries sagas, each in its own task, a bounded number at once.

A saga is logged first and driven second: once :meth:`SagaEngine.start` returns,
the saga survives any crash. At most ``max_concurrent`` sagas are driven at
the same time (a slow participant holds only its own sagas' slots); the others
wait their turn, already logged. Shutdown stops taking new sagas, lets running
ones finish for a grace period, then cancels them: recovery resumes them at the
next start. A run stopped by an unexpected error (a bug, a failing disk) is driven
again from the log after a growing pause, so the saga does not wait for a restart;
after a few such runs in a row the saga needs attention, like a compensation that ran
out of retries, and ``RetrySaga`` resumes it.

A new saga's run continues the trace of the call that started it (the context is
captured in :meth:`SagaEngine.start` and handed to the runner, which opens the saga
span under it); a saga is counted as started once it is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from google.protobuf.message import Message
from opentelemetry import context as otel_context
from tenacity import wait_exponential, wait_random
from tenacity.wait import wait_base

from common.errors import InvalidArgument, NotFound, Transient, TransientKind
from common.retrying import attempt_then_retry
from common.saga_ids import new_saga_id
from common.store import utc_now
from common.telemetry import saga_metrics
from contract.definitions import Definitions
from contract.messages import pack
from coordinator.choreography.observation import settlement
from coordinator.engine.plan import carried_by_services, first_intents
from coordinator.engine.runner import SagaRunner
from coordinator.engine.telemetry import RunCause
from coordinator.log.records import (
    RETRYABLE,
    SETTLED,
    UNFINISHED,
    Change,
    Direction,
    Kind,
    NewSaga,
    SagaRecord,
    SagaStatus,
)
from coordinator.log.saga_log import LeaseLost, SagaLog, StatusConflict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Redrive:
    """How a run stopped by an unexpected error is driven again: after ``first_wait``
    seconds, doubling up to a minute and jittered (so that sagas stopped together by a
    full disk do not come back together); after ``attempts`` runs in a row end that way,
    the saga needs attention."""

    first_wait: float = 1.0
    attempts: int = 8

    @property
    def wait(self) -> wait_base:
        backoff = wait_exponential(multiplier=self.first_wait, max=60.0)
        return backoff + wait_random(0, self.first_wait)


class SagaEngine:
    """Owns the tasks that drive sagas."""

    def __init__(
        self,
        saga_log: SagaLog,
        definitions: Definitions,
        runner: SagaRunner,
        max_concurrent: int = 500,
        max_pending: int = 20_000,
        redrive: Redrive = Redrive(),
    ) -> None:
        self.log = saga_log
        self.definitions = definitions
        self.runner = runner
        self._slots = asyncio.Semaphore(max_concurrent)
        self._max_pending = max_pending
        self._redrive = redrive
        self._tasks: dict[str, asyncio.Task[SagaRecord | None]] = {}
        self._closing = False
        # With replicas, another one may take a saga over from this one: stop driving it.
        saga_log.on_lease_lost(self._lease_lost)
        # Done once shutdown begins: ends every wait for an outcome (made at first use,
        # inside the event loop).
        self._closed: asyncio.Future[None] | None = None

    @property
    def room(self) -> int:
        """How many more sagas it takes (none once shutdown began)."""
        return 0 if self._closing else max(self._max_pending - len(self._tasks), 0)

    async def start(
        self,
        saga: str,
        data: Message,
        idempotency_key: str = "",
        request_hash: str = "",
        trace_id: str = "",
    ) -> tuple[SagaRecord, bool]:
        """Log a new saga and start driving it; or find the one with the same key.

        ``trace_id`` is the saga's trace, kept in the log for ``GetSaga``: the current
        span's (the ``PlaceOrder`` call's), whose child the saga's span then is, or one of
        the saga's own (coordinator/engine/telemetry.py).

        Returns:
            The saga as logged, and whether it was created now.
        """
        definition = self.definitions.get(saga)
        if definition is None:
            known = ", ".join(sorted(self.definitions.sagas))
            raise InvalidArgument("saga", f"unknown saga {saga!r} (known: {known})")
        if self._closing:
            raise Transient("the coordinator is shutting down")
        if len(self._tasks) >= self._max_pending:
            raise Transient(
                f"{len(self._tasks)} sagas in progress; try again later",
                TransientKind.OVERLOADED,
            )
        now = utc_now()
        new = NewSaga(
            # A UUIDv7: the id carries its creation time (the barrier's horizon reads it).
            saga_id=new_saga_id(),
            definition=definition.name,
            mode=definition.mode.value,
            data=pack(data).SerializeToString(),
            step_names=tuple(s.name for s in definition.steps),
            created_at=now,
            deadline=now + timedelta(seconds=definition.deadline),
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            trace_id=trace_id,
        )
        record, created = await self.log.create(new, then=first_intents(definition, now))
        if created:
            saga_metrics().saga_started(definition.name, definition.mode.value)
            self._spawn(record, RunCause.STARTED, otel_context.get_current())
        return record, created

    def resume(self, record: SagaRecord) -> bool:
        """Drive an unfinished saga found in the log (recovery). False if nothing to do:
        it is settled, or the services carry it on and the observer follows it; or if it
        cannot be driven, its definition not being loaded (logged, and left as it is)."""
        if record.saga_id in self._tasks:
            return False  # still driven here (its lease expired under a slow run)
        if record.definition not in self.definitions.sagas:
            log.error(
                "saga left unfinished: its definition is not loaded saga_id=%s definition=%s",
                record.saga_id,
                record.definition,
            )
            self.log.release(record.saga_id, take_over=True)  # a replica that has it may
            return False
        if not self._drivable(record):
            self.log.release(record.saga_id)
            return False
        self._spawn(record, RunCause.RECOVERED)
        return True

    async def retry(self, saga_id: str) -> SagaRecord:
        """Resume a saga that needs attention, with a fresh retry budget, or a stalled one.

        A saga the coordinator drives runs again: its compensations, or a choreographed
        saga's start (past the deadline: one retry budget, then it compensates). A
        choreographed saga the services carry has nothing for the coordinator to call:
        it is settled if what was observed adds up, and otherwise waits for the
        services' events again (and is flagged stalled again if none come).

        Raises:
            NotFound: no such saga.
            StatusConflict: the saga neither needs attention nor is stalled.
        """
        record = await self.log.load(saga_id)
        if record is None:
            raise NotFound(f"no saga {saga_id}")
        backward = record.direction is Direction.BACKWARD
        await self.log.append(
            saga_id,
            Change(
                kind=Kind.SAGA_RETRIED,
                at=utc_now(),
                saga_status=SagaStatus.COMPENSATING if backward else SagaStatus.RUNNING,
                next_round=True,
                require_status=RETRYABLE,
                detail="retry requested",
            ),
        )
        retried = await self.log.load(saga_id)
        assert retried is not None
        definition = self.definitions.get(retried.definition)
        if definition is None or not carried_by_services(definition, retried):
            self._spawn(retried, RunCause.RETRIED, otel_context.get_current())
            return retried
        self.log.release(saga_id)  # the services carry it: nothing for this replica to drive
        settled = settlement(retried, utc_now())
        if settled is None:
            return retried
        with contextlib.suppress(StatusConflict):  # the observer settled it meanwhile
            await self.log.append(saga_id, settled)
        found = await self.log.load(saga_id)
        assert found is not None
        return found

    async def wait_settled(self, saga_id: str) -> SagaRecord:
        """Wait until the saga is completed, compensated or needs attention.

        Returns the saga as it is then, or as it is when shutdown begins.
        """
        run = self._tasks.get(saga_id)
        if run is not None:
            # Driven here: its run ends with the settled record it logged (an
            # orchestrated saga), which spares reading it back from the log.
            await asyncio.wait((run, self._closing_signal()), return_when=asyncio.FIRST_COMPLETED)
            if run.done() and not run.cancelled():
                record = run.result()
                if record is not None and record.status in SETTLED:
                    return record
        with self.log.listen(saga_id) as listener:
            check = True
            while True:
                listener.changed.clear()
                if check or listener.woken or listener.status in SETTLED:
                    record = await self.log.load(saga_id)
                    if record is None:
                        raise NotFound(f"no saga {saga_id}")
                    if record.status in SETTLED or listener.woken or self._closing:
                        return record
                    check = False
                await listener.changed.wait()

    def _closing_signal(self) -> asyncio.Future[None]:
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        return self._closed

    def _spawn(
        self, record: SagaRecord, cause: RunCause, context: otel_context.Context | None = None
    ) -> None:
        saga_id = record.saga_id
        previous = self._tasks.get(saga_id)
        task = asyncio.create_task(
            self._drive(record, cause, context, previous), name=f"saga-{saga_id}"
        )
        self._tasks[saga_id] = task

        def forget(done: asyncio.Task[SagaRecord | None]) -> None:
            if self._tasks.get(saga_id) is done:
                del self._tasks[saga_id]
                # Not driven here any more: settled or left to the services (nobody drives
                # it), or stopped unfinished (shutdown, a run that could not go on): for
                # another replica to take over.
                ended = None if done.cancelled() or done.exception() else done.result()
                stopped = ended is None or (ended.status in UNFINISHED and self._drivable(ended))
                self.log.release(saga_id, take_over=stopped)

        task.add_done_callback(forget)

    def _lease_lost(self, saga_id: str) -> None:
        """Another replica took the saga over (this one was paused or cut off past its
        lease): stop driving it; its writes are refused anyway."""
        task = self._tasks.get(saga_id)
        if task is not None and not task.done():
            log.warning("stopped driving saga: its lease was taken over saga_id=%s", saga_id)
            task.cancel()

    async def _drive(
        self,
        record: SagaRecord,
        cause: RunCause,
        context: otel_context.Context | None,
        previous: asyncio.Task[SagaRecord | None] | None,
    ) -> SagaRecord | None:
        if previous is not None:
            # The saga's last run is still writing its final transition.
            await asyncio.wait([previous])
        saga_id = record.saga_id

        async def run(attempt: int) -> SagaRecord | None:
            try:
                if attempt == 1:
                    async with self._slots:
                        return await self.runner.run(record, cause, context)
                # The failed run may have logged more than it returned: start from the log.
                logged = await self.log.load(saga_id)
                if logged is None or self._closing or not self._drivable(logged):
                    return logged  # settled, carried on by the services, or left to recovery
                if not self.log.holds(saga_id):
                    return None  # another replica took it over meanwhile
                async with self._slots:
                    return await self.runner.run(logged, RunCause.REDRIVEN)
            except Exception as error:
                if not _lease_lost(error):
                    raise
                # Another replica drives it now; this run's writes were refused.
                log.warning("stopped driving saga: lease lost saga_id=%s", saga_id)
                return None

        def before_redrive(attempt: int, delay: float, error: BaseException) -> None:
            log.error(
                "saga stopped by an unexpected error saga_id=%s; driving it again in %.1f s"
                " (attempt %d)",
                saga_id,
                delay,
                attempt,
                exc_info=error,
            )

        # A bug or a failing disk must not leave a saga unfinished until the next start;
        # shutdown cancels the wait, and recovery picks the saga up then.
        redrive = self._redrive
        try:
            return await attempt_then_retry(
                run, Exception, redrive.wait, before_redrive, redrive.attempts
            )
        except Exception as error:
            return await self._give_up(saga_id, redrive.attempts, error)

    async def _give_up(self, saga_id: str, runs: int, error: Exception) -> SagaRecord | None:
        """Mark a saga whose runs keep failing as needing attention: an operator looks,
        then ``RetrySaga``. If even that cannot be logged, recovery tries at the next start."""
        cause = _first_leaf(error)
        detail = (
            f"{runs} runs in a row stopped by an unexpected error: {type(cause).__name__}: {cause}"
        )
        log.error("saga needs attention saga_id=%s: %s", saga_id, detail, exc_info=error)
        now = utc_now()
        try:
            await self.log.append(
                saga_id,
                Change(
                    kind=Kind.SAGA_NEEDS_ATTENTION,
                    at=now,
                    saga_status=SagaStatus.NEEDS_ATTENTION,
                    interrupt_open_attempts=True,
                    require_status=UNFINISHED,
                    detail=detail,
                ),
            )
            marked = True
        except StatusConflict:
            marked = False  # it settled meanwhile
        except Exception:
            log.exception("saga left to recovery: marking it failed too saga_id=%s", saga_id)
            return None
        # The log holds the outcome now; a failed read-back only leaves the caller without it.
        with contextlib.suppress(Exception):
            record = await self.log.load(saga_id)
            if record is not None and marked:
                duration = (now - record.created_at).total_seconds()
                saga_metrics().saga_needs_attention(record.definition, record.mode, duration)
            return record
        return None

    def _drivable(self, record: SagaRecord) -> bool:
        """Unfinished, and ours to drive: not carried on by the services (choreography)."""
        definition = self.definitions.get(record.definition)
        return (
            record.status in UNFINISHED
            and definition is not None
            and not carried_by_services(definition, record)
        )

    def drain(self) -> None:
        """Stop taking sagas, and end every wait for an outcome (shutdown has begun)."""
        self._closing = True
        closed = self._closing_signal()
        if not closed.done():
            closed.set_result(None)
        self.log.wake_all()

    async def close(self, grace: float) -> None:
        """Stop taking sagas; give running ones ``grace`` seconds, then cancel them. Idempotent."""
        self.drain()
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.info("left to recovery sagas=%d", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)


def _lease_lost(error: BaseException) -> bool:
    """Whether the error is, or groups (parallel steps), a refused write of a lost lease."""
    if isinstance(error, LeaseLost):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_lease_lost(inner) for inner in error.exceptions)
    return False


def _first_leaf(error: BaseException) -> BaseException:
    """The error itself, or the first one inside it when parallel steps grouped it."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error
