"""What a step attempt's ending means for the saga log: outcomes, errors, failures.

Pure functions of the error tree and the log's records, used by the runner.
"""

from __future__ import annotations

from datetime import datetime

from common.errors import (
    Aborted,
    BreakerOpen,
    BusinessRejection,
    SagawireError,
    Transient,
)
from common.grpc_errors import status_code_for
from coordinator.log.records import (
    AttemptChange,
    AttemptOutcome,
    Change,
    ErrorDetail,
    Failure,
    Kind,
    Phase,
    StepRecord,
    StepStatus,
)
from protos.sagawire.v1 import participant_pb2

_BARRIER = {
    participant_pb2.BARRIER_OUTCOME_APPLIED: "applied",
    participant_pb2.BARRIER_OUTCOME_REPLAYED: "replayed",
    participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION: "null compensation",
}


class StepFailed(Exception):
    """A compensable step failed for good; the saga compensates."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.describe())
        self.failure = failure


def error_detail(error: SagawireError) -> ErrorDetail:
    return ErrorDetail(
        code=status_code_for(error).name,
        reason=str(getattr(error, "reason", "")),
        message=error.message,
    )


def outcome_of(error: SagawireError) -> AttemptOutcome:
    if isinstance(error, BusinessRejection):
        return AttemptOutcome.REJECTED
    if isinstance(error, BreakerOpen):
        return AttemptOutcome.BREAKER_OPEN
    if isinstance(error, Transient):
        return AttemptOutcome.TRANSIENT
    if isinstance(error, Aborted):
        return AttemptOutcome.ABORTED
    return AttemptOutcome.ERROR


def needs_compensation(step: StepRecord) -> bool:
    """Whether the step's execute may have taken effect (and is not undone yet)."""
    if step.status in (StepStatus.PENDING, StepStatus.REJECTED, StepStatus.COMPENSATED):
        return False
    executes = step.attempts_of(Phase.EXECUTE)
    # Calls the breaker refused never reached the participant.
    return any(a.outcome is not AttemptOutcome.BREAKER_OPEN for a in executes)


def barrier_outcome(reply: participant_pb2.StepReply) -> str:
    """How the participant's barrier let the call through: applied, replayed, null."""
    return _BARRIER.get(reply.outcome, "")


def failed_attempt(
    step: str, phase: Phase, number: int, error: SagawireError, at: datetime
) -> Change:
    """The change that records an attempt's error (a rejection also rejects the step)."""
    outcome = outcome_of(error)
    rejected = phase is Phase.EXECUTE and outcome is AttemptOutcome.REJECTED
    if rejected:
        kind = Kind.STEP_REJECTED
    elif phase is Phase.EXECUTE:
        kind = Kind.STEP_ATTEMPT_FAILED
    else:
        kind = Kind.COMPENSATION_ATTEMPT_FAILED
    detail = error_detail(error)
    return Change(
        kind=kind,
        at=at,
        step=step,
        attempt=AttemptChange(phase, number, outcome, detail),
        step_status=StepStatus.REJECTED if rejected else None,
        detail=f"{outcome.value}: {detail.reason or detail.code}: {detail.message}",
    )
