"""The saga's data: its input with every succeeded step's result laid over it
(contract/messages.py), and the request of a step built from it."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message

from contract.definitions import SagaDefinition, Step
from contract.messages import overlay, pack
from contract.modes import WIRE_MODES
from coordinator.log.records import Phase, SagaRecord, StepStatus
from protos.sagawire.v1 import participant_pb2

# Statuses of a step whose execute returned a result.
_WITH_RESULT = frozenset({StepStatus.SUCCEEDED, StepStatus.COMPENSATING, StepStatus.COMPENSATED})


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
        mode=WIRE_MODES[record.mode],
        # The services' events carry it on: in choreography, the flow they follow.
        saga=definition.name,
    )
