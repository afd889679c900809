"""The saga log's records as the public API's messages (and the API's enums back)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message

from common.breakers import BreakerView
from common.bulkhead import BulkheadView
from contract.definitions import SagaDefinition
from contract.messages import pack
from contract.modes import wire_mode
from coordinator.engine.payloads import saga_data
from coordinator.log.records import (
    AttemptRecord,
    Failure,
    SagaRecord,
    SagaStatus,
    StepStatus,
    Transition,
)
from protos.sagawire.v1 import common_pb2
from protos.sagawire.v1 import coordinator_pb2 as pb

SAGA_STATUS = {
    SagaStatus.RUNNING: pb.SAGA_STATUS_RUNNING,
    SagaStatus.COMPENSATING: pb.SAGA_STATUS_COMPENSATING,
    SagaStatus.COMPLETED: pb.SAGA_STATUS_COMPLETED,
    SagaStatus.COMPENSATED: pb.SAGA_STATUS_COMPENSATED,
    SagaStatus.NEEDS_ATTENTION: pb.SAGA_STATUS_NEEDS_ATTENTION,
    SagaStatus.STALLED: pb.SAGA_STATUS_STALLED,
}
STATUS_OF: dict[int, SagaStatus] = {int(v): k for k, v in SAGA_STATUS.items()}

STEP_STATUS = {
    StepStatus.PENDING: pb.STEP_STATUS_PENDING,
    StepStatus.RUNNING: pb.STEP_STATUS_RUNNING,
    StepStatus.SUCCEEDED: pb.STEP_STATUS_SUCCEEDED,
    StepStatus.REJECTED: pb.STEP_STATUS_REJECTED,
    StepStatus.FAILED: pb.STEP_STATUS_FAILED,
    StepStatus.COMPENSATING: pb.STEP_STATUS_COMPENSATING,
    StepStatus.COMPENSATED: pb.STEP_STATUS_COMPENSATED,
}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def failure_message(failure: Failure | None) -> pb.Failure | None:
    if failure is None:
        return None
    return pb.Failure(
        step=failure.step, code=failure.code, reason=failure.reason, message=failure.message
    )


def _attempt(a: AttemptRecord) -> pb.Attempt:
    return pb.Attempt(
        number=a.number,
        phase=a.phase.value,
        started_at=timestamp(a.started_at),
        finished_at=timestamp(a.finished_at),
        outcome=a.outcome.value if a.outcome else "",
        error_code=a.error.code if a.error else "",
        error_reason=a.error.reason if a.error else "",
        error_message=a.error.message if a.error else "",
    )


# Steps whose execute took effect (and may since have been undone).
_DONE = frozenset({StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED})


def summary(data: Message | None, record: SagaRecord) -> pb.SagaSummary:
    """The saga at a glance: its data's ``customer_id`` and ``total`` (when it has such
    fields), the failure in one line, and how many steps took effect."""
    found = pb.SagaSummary(
        failure=record.failure.describe() if record.failure else "",
        steps_done=sum(s.status in _DONE for s in record.steps),
        steps_total=len(record.steps),
    )
    values = {field.name: value for field, value in data.ListFields()} if data else {}
    customer = values.get("customer_id")
    if isinstance(customer, str):
        found.customer_id = customer
    total = values.get("total")
    if isinstance(total, common_pb2.Money):
        found.total.CopyFrom(total)
    return found


def saga_message(definition: SagaDefinition | None, record: SagaRecord) -> pb.Saga:
    """A saga as GetSaga shows it (ListSagas records come without attempts)."""
    data = saga_data(definition, record) if definition is not None else None
    packed = pack(data) if data is not None else any_pb2.Any.FromString(record.data)
    steps = []
    for step in record.steps:
        declared = definition.step(step.name) if definition is not None else None
        steps.append(
            pb.SagaStep(
                name=step.name,
                participant=declared.participant if declared else "",
                action=declared.action if declared else "",
                compensation=(declared.compensation or "") if declared else "",
                status=STEP_STATUS[step.status],
                attempts=[_attempt(a) for a in step.attempts],
                after=list(declared.after) if declared else [],
                pivot=declared.pivot if declared else False,
            )
        )
    return pb.Saga(
        saga_id=record.saga_id,
        saga=record.definition,
        mode=wire_mode(record.mode),
        status=SAGA_STATUS[record.status],
        data=packed,
        steps=steps,
        failure=failure_message(record.failure),
        created_at=timestamp(record.created_at),
        updated_at=timestamp(record.updated_at),
        finished_at=timestamp(record.finished_at),
        deadline=timestamp(record.deadline),
        trace_id=record.trace_id,
        idempotency_key=record.idempotency_key,
        summary=summary(data, record),
    )


def transition_message(t: Transition) -> pb.SagaTransition:
    return pb.SagaTransition(
        saga_id=t.saga_id,
        sequence=t.seq,
        kind=t.kind.value,
        step=t.step,
        attempt=t.attempt,
        at=timestamp(t.at),
        status=SAGA_STATUS[t.status],
        detail=t.detail,
    )


def definition_message(definition: SagaDefinition) -> pb.Definition:
    """A saga definition as ListDefinitions shows it: its steps in a dependency order."""
    return pb.Definition(
        name=definition.name,
        mode=wire_mode(definition.mode.value),
        data_type=definition.data_type,
        deadline_seconds=definition.deadline,
        steps=[
            pb.DefinitionStep(
                name=step.name,
                participant=step.participant,
                action=step.action,
                compensation=step.compensation or "",
                after=list(step.after),
                pivot=step.pivot,
                forward_only=step.name in definition.forward_only,
            )
            for step in definition.steps
        ],
    )


def counts_message(counts: Mapping[SagaStatus, int]) -> pb.CountSagasResponse:
    """Sagas by status, in the order of the API's enum."""
    return pb.CountSagasResponse(
        counts=[
            pb.SagaCount(status=SAGA_STATUS[status], count=counts[status])
            for status in sorted(counts, key=lambda s: SAGA_STATUS[s])
            if counts[status]
        ],
        total=sum(counts.values()),
    )


def breaker_message(view: BreakerView, bulkhead: BulkheadView, address: str = "") -> pb.Breaker:
    """A participant's breaker, with its bulkhead and the address it is called at."""
    return pb.Breaker(
        participant=view.participant,
        address=address,
        state=view.state,
        failure_count=view.window_failures,
        opened_at=timestamp(view.opened_at),
        transitions=[
            pb.BreakerTransition(from_state=t.from_state, to_state=t.to_state, at=timestamp(t.at))
            for t in view.transitions
        ],
        reset_timeout_seconds=view.settings.reset_timeout,
        window_calls=view.window_calls,
        failure_rate_threshold=view.settings.failure_rate,
        minimum_calls=view.settings.minimum_calls,
        window_seconds=view.settings.window,
        waiting_for_breaker=view.waiting,
        in_flight=bulkhead.in_flight,
        bulkhead_limit=bulkhead.limit,
        waiting_for_bulkhead=bulkhead.waiting,
    )
