"""The saga's data: its input with every succeeded step's result merged over it.

Each step returns only the fields it fills in (a total, a charge id...); the
request of the next step carries the merged data as its payload.
"""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from coordinator.definitions import SagaDefinition, Step
from coordinator.records import Phase, SagaRecord, StepStatus
from protos.sagawire.v1 import participant_pb2

# The wire value of a saga's mode: participants' reactions act only on choreographed sagas.
MODES = {
    "orchestration": participant_pb2.SAGA_MODE_ORCHESTRATION,
    "choreography": participant_pb2.SAGA_MODE_CHOREOGRAPHY,
}

# Statuses of a step whose execute returned a result.
_WITH_RESULT = frozenset({StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED})


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def saga_data(definition: SagaDefinition, record: SagaRecord) -> Message:
    """The input merged with the results of the steps that succeeded, in step order."""
    data = definition.new_data()
    any_pb2.Any.FromString(record.data).Unpack(data)
    for step in record.steps:
        if step.status in _WITH_RESULT and step.result:
            result = definition.new_data()
            if any_pb2.Any.FromString(step.result).Unpack(result):
                data.MergeFrom(result)
    return data


def step_request(
    definition: SagaDefinition, record: SagaRecord, step: Step, phase: Phase
) -> participant_pb2.StepRequest:
    """The request for a step's execute or compensate, keyed by (saga id, step name)."""
    data = saga_data(definition, record)
    if phase is Phase.COMPENSATE and definition.reason_field and record.failure is not None:
        setattr(data, definition.reason_field, record.failure.describe()[:200])
    action = step.action if phase is Phase.EXECUTE else step.compensation
    assert action is not None  # only compensable steps are compensated
    return participant_pb2.StepRequest(
        saga_id=record.saga_id,
        step=step.name,
        action=action,
        payload=pack(data),
        mode=MODES[record.mode],
    )
