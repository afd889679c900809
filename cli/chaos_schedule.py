"""When a chaos run breaks what: the seeded schedule of kills and stream cuts, and the
fault plan each service gets.

An event fires when a number of the run's sagas have settled (progress, not wall
time, so the same seed breaks the same stretch of the run on a fast or a slow
machine). Kill points fall between 10% and 75% of the run; a killed process stays
down for a seeded moment, then is started again on the same port and store.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from common.config import SERVICE_NAMES
from protos.sagawire.v1 import admin_pb2

COORDINATOR = "coordinator"
# Events fire between these fractions of the run's sagas.
_FIRST, _LAST = 0.10, 0.75
# A killed process stays down this long (seconds) before it is started again.
_DOWN_MIN, _DOWN_MAX = 0.1, 1.0


class Action(StrEnum):
    kill_coordinator = "kill coordinator"
    kill_participant = "kill participant"
    cut_streams = "cut streams"


@dataclass(frozen=True)
class ChaosEvent:
    """One blow: ``action`` on ``target`` once ``after`` sagas have settled."""

    after: int
    action: Action
    target: str
    # Seconds between the SIGKILL and the restart (0 for a stream cut).
    downtime: float = 0.0

    @property
    def what(self) -> str:
        """e.g. "kill coordinator", "kill participant payment", "cut streams of order"."""
        if self.action is Action.kill_coordinator:
            return self.action.value
        if self.action is Action.cut_streams:
            return f"{self.action.value} of {self.target}"
        return f"{self.action.value} {self.target}"


def draw_schedule(
    seed: int,
    sagas: int,
    *,
    kills_coordinator: int,
    kills_participant: int,
    stream_cuts: int,
) -> tuple[ChaosEvent, ...]:
    """The events of a run of ``sagas`` sagas with ``seed``, in firing order."""
    rng = random.Random(f"sagawire-chaos-schedule-{seed}")
    low, high = max(1, int(sagas * _FIRST)), max(1, int(sagas * _LAST))
    events = []
    for action, count in (
        (Action.kill_coordinator, kills_coordinator),
        (Action.kill_participant, kills_participant),
        (Action.cut_streams, stream_cuts),
    ):
        for _ in range(count):
            after = rng.randint(low, high)
            killing_coordinator = action is Action.kill_coordinator
            target = COORDINATOR if killing_coordinator else rng.choice(SERVICE_NAMES)
            downtime = 0.0 if action is Action.cut_streams else rng.uniform(_DOWN_MIN, _DOWN_MAX)
            events.append(ChaosEvent(after, action, target, round(downtime, 2)))
    return tuple(sorted(events, key=lambda e: (e.after, e.action.value, e.target)))


def fault_plan(seed: int, service: str, rate: float) -> admin_pb2.FaultPlan:
    """What ``service`` fails with during the run: UNAVAILABLE at ``rate``, seeded per
    service (0 clears every fault)."""
    if rate <= 0:
        return admin_pb2.FaultPlan()
    index = SERVICE_NAMES.index(service)
    return admin_pb2.FaultPlan(unavailable_rate=rate, seed=seed * 16 + index + 1)
