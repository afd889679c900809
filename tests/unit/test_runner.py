"""The runner's rules, in milliseconds: the real SagaRunner on the in-memory saga log,
its participants a script (tests/unit/fakes.py), every saga of sagas.yaml.

Whatever the participants answer (a business "no" at any compensable step, transient
failures of any call, enough of them to exhaust a step's retries), every run ends
COMPLETED or COMPENSATED; compensations run in reverse dependency order; no step is
executed after its compensation; and a compensated saga leaves nothing done.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from common.breakers import BreakerBoard, BreakerSettings
from common.policy import CallPolicy, RetryPolicy
from contract.definitions import Definitions, SagaDefinition, load_definitions
from contract.messages import pack
from coordinator.engine.participants import ParticipantClient
from coordinator.engine.plan import first_intents
from coordinator.engine.runner import SagaRunner
from coordinator.log.records import NewSaga, SagaRecord, SagaStatus
from coordinator.log.saga_log import InMemorySagaLog, SagaLog
from protos.sagawire.v1 import order_saga_pb2
from tests.unit.fakes import Answer, Call, FakeClock, FakeParticipants

# No waits between attempts: the rules, not the backoff, are under test.
_FAST = RetryPolicy(
    max_attempts=3, initial_backoff=0, max_backoff=0, jitter=0, attempt_timeout=1, retry_for=0
)
_COMPENSATION = replace(_FAST, max_attempts=4)


def _fast(definitions: Definitions) -> Definitions:
    sagas = {
        name: replace(
            saga,
            steps=tuple(
                replace(s, retry=_FAST, compensation_retry=_COMPENSATION) for s in saga.steps
            ),
        )
        for name, saga in definitions.sagas.items()
    }
    return replace(definitions, sagas=sagas)


DEFINITIONS = _fast(load_definitions(mode="orchestration"))


@st.composite
def scripts(draw: st.DrawFn) -> tuple[SagaDefinition, dict[str, dict[str, list[Answer]]]]:
    """A saga and what its participants answer: a compensable step may fail transiently
    (up to one more time than its retries allow) and then succeed or say no; a step after
    the pivot only fails transiently before it succeeds (it cannot say no); a
    compensation fails transiently less often than its budget."""
    definition = draw(st.sampled_from(sorted(DEFINITIONS.sagas.values(), key=lambda d: d.name)))
    script: dict[str, dict[str, list[Answer]]] = {}
    for step in definition.steps:
        failures = draw(st.integers(0, _FAST.max_attempts))
        forward_only = step.name in definition.forward_only
        last = Answer.OK if forward_only else draw(st.sampled_from([Answer.OK, Answer.REJECT]))
        undo = draw(st.integers(0, _COMPENSATION.max_attempts - 1))
        script[step.name] = {
            "execute": [Answer.TRANSIENT] * failures + [last],
            "compensate": [Answer.TRANSIENT] * undo,
        }
    return definition, script


def runner_on(saga_log: SagaLog, participants: ParticipantClient, clock: FakeClock) -> SagaRunner:
    """The runner of DEFINITIONS on ``saga_log``, with breakers that never open."""
    policy = CallPolicy(BreakerBoard(BreakerSettings(minimum_calls=1_000_000)))
    return SagaRunner(saga_log, DEFINITIONS, participants, policy, clock=clock)


async def start(saga_log: SagaLog, definition: SagaDefinition, now: datetime) -> SagaRecord:
    """Log a new order saga with its first intents, as the API starts one."""
    data = order_saga_pb2.OrderSagaData(order_id="o-1", customer_id="alice")
    new = NewSaga(
        saga_id="saga-1",
        definition=definition.name,
        mode=definition.mode.value,
        data=pack(data).SerializeToString(),
        step_names=tuple(s.name for s in definition.steps),
        created_at=now,
        deadline=now + timedelta(seconds=definition.deadline),
    )
    record, _ = await saga_log.create(new, then=first_intents(definition, now))
    return record


async def _run(definition: SagaDefinition, participants: FakeParticipants) -> SagaRecord:
    clock = FakeClock()
    saga_log = InMemorySagaLog()
    runner = runner_on(saga_log, participants, clock)
    record = await start(saga_log, definition, clock())
    settled = await runner.run(record)
    logged = await saga_log.load(record.saga_id)
    assert logged is not None and logged.status is settled.status  # the log agrees
    return settled


def _applied(calls: list[Call], step: str, phase: str) -> list[int]:
    """Where the calls of ``step`` that took effect are in ``calls``."""
    return [
        i
        for i, c in enumerate(calls)
        if c.step == step and c.phase == phase and c.answer is Answer.OK
    ]


@settings(max_examples=60, deadline=None)
@given(scripts())
def test_every_run_settles_and_undoes_in_reverse_dependency_order(
    case: tuple[SagaDefinition, dict[str, dict[str, list[Answer]]]],
) -> None:
    definition, script = case
    participants = FakeParticipants(script)
    settled = asyncio.run(_run(definition, participants))
    calls = participants.calls

    assert settled.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED), calls
    for step in definition.steps:
        executed = [i for i, c in enumerate(calls) if c.step == step.name and c.phase == "execute"]
        compensations = [
            i for i, c in enumerate(calls) if c.step == step.name and c.phase == "compensate"
        ]
        # No step executed after its compensation (the barrier would refuse it anyway).
        if compensations:
            assert max(executed, default=-1) < compensations[0], calls
        undone = _applied(calls, step.name, "compensate")
        if settled.status is SagaStatus.COMPLETED:
            assert not compensations and len(_applied(calls, step.name, "execute")) == 1
        elif _applied(calls, step.name, "execute"):
            # Whatever took effect was undone, once.
            assert len(undone) == 1, calls
        # Reverse dependency order: a step is undone only after every step that ran
        # after it was.
        for later in definition.descendants(step.name):
            later_undone = _applied(calls, later, "compensate")
            if compensations and later_undone:
                assert later_undone[0] < compensations[0], calls


def test_a_rejection_after_parallel_steps_undoes_them_before_their_first_step() -> None:
    definition = DEFINITIONS.sagas["place_order"]
    participants = FakeParticipants({"schedule_shipment": {"execute": [Answer.REJECT]}})
    settled = asyncio.run(_run(definition, participants))
    assert settled.status is SagaStatus.COMPENSATED
    undone = [c.step for c in participants.calls if c.phase == "compensate"]
    assert set(undone[:2]) == {"reserve_stock", "charge_payment"}
    assert undone[2:] == ["create_order"]
