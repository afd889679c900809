"""A saga's mode, by name (definitions, logs, CLI) and on the wire (participant_pb2).

The one map between the two: requests, views, events and the chaos check all use it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeAlias

from protos.sagawire.v1 import participant_pb2


class SagaMode(StrEnum):
    """How a saga runs: the coordinator calls each step, or the services react to each
    other's events."""

    ORCHESTRATION = "orchestration"
    CHOREOGRAPHY = "choreography"


WireMode: TypeAlias = participant_pb2.SagaMode.ValueType

# Name -> wire value. Participants' reactions act only on choreographed sagas.
WIRE_MODES: dict[str, WireMode] = {
    SagaMode.ORCHESTRATION.value: participant_pb2.SAGA_MODE_ORCHESTRATION,
    SagaMode.CHOREOGRAPHY.value: participant_pb2.SAGA_MODE_CHOREOGRAPHY,
}
# Wire value -> name (events carry the name in a header).
MODE_NAMES: dict[int, str] = {wire: name for name, wire in WIRE_MODES.items()}


def wire_mode(name: str) -> WireMode:
    """The wire value of a mode name; UNSPECIFIED for a name no definition uses."""
    return WIRE_MODES.get(name, participant_pb2.SAGA_MODE_UNSPECIFIED)
