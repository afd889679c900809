"""The saga's data: its input with every succeeded step's result merged over it.

Each step returns only the fields it fills in (a total, a charge id...); the
request of the next step carries the merged data as its payload. A choreographed
step's result is the whole data its event carried, so results are laid over the
input field by field: a field a result sets replaces the input's (protobuf's
``MergeFrom`` would append repeated fields: the order's items, once per step).
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
                overlay(data, result)
    return data


def overlay(data: Message, result: Message) -> None:
    """Set every field ``result`` sets on ``data``, replacing what was there."""
    for field, value in result.ListFields():
        if field.is_repeated:  # lists and maps
            data.ClearField(field.name)
            getattr(data, field.name).MergeFrom(value)
        elif field.message_type is not None:
            getattr(data, field.name).CopyFrom(value)
        else:
            setattr(data, field.name, value)


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
        # The services' events carry it on: in choreography, the flow they follow.
        saga=definition.name,
    )
