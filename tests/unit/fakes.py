"""Fakes at the coordinator's ports, for unit tests of the engine without a network.

:class:`FakeParticipants` is a
:class:`~coordinator.engine.participants.ParticipantClient` that answers from
a script and records every call it was asked to make, in order; :class:`FakeClock`
is a clock that moves only when read (or told to).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from common.errors import BusinessRejection, Transient
from coordinator.engine.participants import ParticipantClient
from protos.sagawire.v1 import participant_pb2


class Answer(StrEnum):
    """How a fake participant answers one call."""

    OK = "ok"
    REJECT = "reject"  # a business "no" (execute only)
    TRANSIENT = "transient"  # UNAVAILABLE: the call did nothing


@dataclass(frozen=True)
class Call:
    """A call that reached a participant, and how it was answered."""

    step: str
    phase: str  # "execute" or "compensate"
    answer: Answer


@dataclass
class FakeParticipants(ParticipantClient):
    """Answers each step's calls from ``script`` (step -> phase -> answers, in turn;
    once they run out, OK) and records them in ``calls``."""

    script: Mapping[str, Mapping[str, Sequence[Answer]]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    finished: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    async def _answer(self, phase: str, request: participant_pb2.StepRequest) -> Answer:
        await asyncio.sleep(0)  # let parallel steps interleave (and a cancellation land)
        made = sum(1 for c in self.calls if c.step == request.step and c.phase == phase)
        answers = self.script.get(request.step, {}).get(phase, ())
        answer = answers[made] if made < len(answers) else Answer.OK
        self.calls.append(Call(request.step, phase, answer))
        if answer is Answer.REJECT:
            raise BusinessRejection("SCRIPTED", f"{request.step} rejected by the script")
        if answer is Answer.TRANSIENT:
            raise Transient(f"{request.step}: {phase} unavailable, by the script")
        return answer

    async def execute(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply:
        await self._answer("execute", request)
        return participant_pb2.StepReply(outcome=participant_pb2.BARRIER_OUTCOME_APPLIED)

    async def compensate(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply:
        await self._answer("compensate", request)
        return participant_pb2.StepReply(outcome=participant_pb2.BARRIER_OUTCOME_APPLIED)

    async def sagas_finished(
        self, participant: str, saga_ids: Sequence[str], deadline: float
    ) -> participant_pb2.SagasFinishedReply:
        self.finished.append((participant, tuple(saga_ids)))
        return participant_pb2.SagasFinishedReply(marked=len(saga_ids))


class FakeClock:
    """A clock for the engine's ``clock=`` that advances ``tick`` every time it is read."""

    def __init__(
        self,
        start: datetime = datetime(2030, 1, 1, tzinfo=UTC),
        tick: timedelta = timedelta(milliseconds=1),
    ) -> None:
        self.now = start
        self.tick = tick

    def __call__(self) -> datetime:
        self.now += self.tick
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by
