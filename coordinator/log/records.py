"""The saga log's data: sagas, steps, attempts, transitions, and the changes that move them.

Every change to a saga is one :class:`Change`, written to the log (with the
transition it appends to the saga's history) before the coordinator acts on it.
:func:`apply` is the meaning of a change: the runner applies it to its copy of
the saga, and every log adapter must store exactly the same result (the
contract tests check that ``load`` after ``append`` equals ``apply``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    # Out of retries for a compensation (or a step after the pivot): waits for RetrySaga.
    NEEDS_ATTENTION = "needs_attention"
    # Choreography only: no progress observed within the saga's deadline.
    STALLED = "stalled"


TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED})
# Nothing more happens to these without a command.
SETTLED = TERMINAL | {SagaStatus.NEEDS_ATTENTION, SagaStatus.STALLED}
UNFINISHED = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})
# What RetrySaga takes up again.
RETRYABLE = frozenset({SagaStatus.NEEDS_ATTENTION, SagaStatus.STALLED})


class Direction(StrEnum):
    FORWARD = "forward"
    BACKWARD = "backward"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    # Retries ran out on transient errors (or a non-retryable error): outcome unknown.
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"


class Phase(StrEnum):
    EXECUTE = "execute"
    COMPENSATE = "compensate"


class AttemptOutcome(StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    TRANSIENT = "transient"
    BREAKER_OPEN = "breaker_open"
    ABORTED = "aborted"
    ERROR = "error"
    # The coordinator stopped (or gave up on the saga) while the call was in flight.
    INTERRUPTED = "interrupted"


class Kind(StrEnum):
    """What a transition records."""

    SAGA_STARTED = "saga_started"
    STEP_STARTED = "step_started"
    STEP_SUCCEEDED = "step_succeeded"
    STEP_REJECTED = "step_rejected"
    STEP_ATTEMPT_FAILED = "step_attempt_failed"
    STEP_FAILED = "step_failed"
    SAGA_COMPENSATING = "saga_compensating"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_ATTEMPT_FAILED = "compensation_attempt_failed"
    COMPENSATION_DONE = "compensation_done"
    SAGA_COMPLETED = "saga_completed"
    SAGA_COMPENSATED = "saga_compensated"
    SAGA_NEEDS_ATTENTION = "saga_needs_attention"
    SAGA_RETRIED = "saga_retried"
    SAGA_RESUMED = "saga_resumed"
    SAGA_DEADLINE_EXCEEDED = "saga_deadline_exceeded"
    # Choreography: no progress observed within the saga's deadline.
    SAGA_STALLED = "saga_stalled"


@dataclass(frozen=True)
class ErrorDetail:
    """Why an attempt failed: gRPC code name, ErrorInfo reason, message."""

    code: str
    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    """Why a saga compensates (or needs attention): which step, and its error."""

    step: str
    code: str
    reason: str
    message: str

    def describe(self) -> str:
        """One line, e.g. ``"charge_payment: INSUFFICIENT_FUNDS (balance too low)"``."""
        what = self.reason or self.code
        text = f"{self.step}: {what}" if self.step else what
        return f"{text} ({self.message})" if self.message else text


@dataclass(frozen=True)
class AttemptRecord:
    phase: Phase
    number: int
    round: int
    started_at: datetime
    finished_at: datetime | None = None
    outcome: AttemptOutcome | None = None
    error: ErrorDetail | None = None


@dataclass(frozen=True)
class StepRecord:
    name: str
    status: StepStatus = StepStatus.PENDING
    # What the step's execute returned (a packed Any), merged into the saga's data.
    result: bytes = b""
    attempts: tuple[AttemptRecord, ...] = ()

    def attempts_of(self, phase: Phase, round_: int | None = None) -> list[AttemptRecord]:
        return [
            a for a in self.attempts if a.phase is phase and (round_ is None or a.round == round_)
        ]


@dataclass(frozen=True)
class SagaRecord:
    saga_id: str
    definition: str
    mode: str
    status: SagaStatus
    direction: Direction
    # The saga's input data (a packed Any); step results are merged over it.
    data: bytes
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    steps: tuple[StepRecord, ...]
    idempotency_key: str = ""
    request_hash: str = ""
    failure: Failure | None = None
    # Bumped by RetrySaga: the compensation budget counts attempts of this round only.
    round: int = 0
    finished_at: datetime | None = None
    trace_id: str = ""
    last_seq: int = 1

    def step(self, name: str) -> StepRecord:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


@dataclass(frozen=True)
class Transition:
    """One entry of a saga's append-only history."""

    saga_id: str
    seq: int
    kind: Kind
    at: datetime
    status: SagaStatus
    step: str = ""
    attempt: int = 0
    detail: str = ""


@dataclass(frozen=True)
class NewSaga:
    """A saga to log before it starts; its steps start PENDING."""

    saga_id: str
    definition: str
    mode: str
    data: bytes
    step_names: tuple[str, ...]
    created_at: datetime
    deadline: datetime
    idempotency_key: str = ""
    request_hash: str = ""
    trace_id: str = ""


@dataclass(frozen=True)
class AttemptChange:
    """An attempt starts (``outcome`` None) or ends."""

    phase: Phase
    number: int
    outcome: AttemptOutcome | None = None
    error: ErrorDetail | None = None


@dataclass(frozen=True)
class Change:
    """One transition of a saga and everything it changes, written in one transaction."""

    kind: Kind
    at: datetime
    step: str = ""
    attempt: AttemptChange | None = None
    step_status: StepStatus | None = None
    result: bytes | None = None
    saga_status: SagaStatus | None = None
    direction: Direction | None = None
    failure: Failure | None = None
    next_round: bool = False
    # Close attempts still open (in flight when the coordinator stopped) as INTERRUPTED.
    interrupt_open_attempts: bool = False
    detail: str = ""
    # Refuse the change (StatusConflict) unless the saga is in one of these statuses.
    require_status: frozenset[SagaStatus] | None = None


def new_record(new: NewSaga) -> SagaRecord:
    """The record a freshly logged saga has."""
    return SagaRecord(
        saga_id=new.saga_id,
        definition=new.definition,
        mode=new.mode,
        status=SagaStatus.RUNNING,
        direction=Direction.FORWARD,
        data=new.data,
        created_at=new.created_at,
        updated_at=new.created_at,
        deadline=new.deadline,
        steps=tuple(StepRecord(name) for name in new.step_names),
        idempotency_key=new.idempotency_key,
        request_hash=new.request_hash,
        trace_id=new.trace_id,
    )


def first_transition(record: SagaRecord) -> Transition:
    return Transition(
        saga_id=record.saga_id,
        seq=1,
        kind=Kind.SAGA_STARTED,
        at=record.created_at,
        status=SagaStatus.RUNNING,
        detail=record.definition,
    )


def apply(record: SagaRecord, change: Change) -> tuple[SagaRecord, Transition]:
    """The saga after ``change``, and the transition it appends."""
    steps = record.steps
    if change.interrupt_open_attempts:
        steps = tuple(replace(s, attempts=_interrupt(s.attempts, change.at)) for s in steps)
    if change.step:
        steps = tuple(
            _apply_step(s, change, record.round) if s.name == change.step else s for s in steps
        )
    status = change.saga_status or record.status
    updated = replace(
        record,
        steps=steps,
        status=status,
        direction=change.direction or record.direction,
        failure=change.failure or record.failure,
        round=record.round + (1 if change.next_round else 0),
        updated_at=change.at,
        finished_at=change.at if status in TERMINAL else record.finished_at,
        last_seq=record.last_seq + 1,
    )
    transition = Transition(
        saga_id=record.saga_id,
        seq=updated.last_seq,
        kind=change.kind,
        at=change.at,
        status=status,
        step=change.step,
        attempt=change.attempt.number if change.attempt else 0,
        detail=change.detail,
    )
    return updated, transition


def _interrupt(attempts: tuple[AttemptRecord, ...], at: datetime) -> tuple[AttemptRecord, ...]:
    return tuple(
        replace(a, outcome=AttemptOutcome.INTERRUPTED, finished_at=at) if a.outcome is None else a
        for a in attempts
    )


_UNDOING = frozenset({StepStatus.COMPENSATING, StepStatus.COMPENSATED})


def _apply_step(step: StepRecord, change: Change, round_: int) -> StepRecord:
    attempts = step.attempts
    moved = change.attempt
    if moved is not None and moved.outcome is None:
        attempts = (*attempts, AttemptRecord(moved.phase, moved.number, round_, change.at))
    elif moved is not None:
        attempts = tuple(
            replace(a, finished_at=change.at, outcome=moved.outcome, error=moved.error)
            if (a.phase, a.number) == (moved.phase, moved.number)
            else a
            for a in attempts
        )
    status = change.step_status or step.status
    if step.status in _UNDOING and status not in _UNDOING:
        # Once a step is being undone, news of its execute (a replay the runner
        # recorded after the observer saw the compensation: choreography's streams
        # race) no longer moves it back; it would never add up to an outcome.
        status = step.status
    return replace(
        step,
        attempts=attempts,
        status=status,
        result=change.result if change.result is not None else step.result,
    )
