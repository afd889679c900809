"""How the services carry a choreographed saga on: reactions built from the saga definitions.

There is no flow table here. Each service loads the same definitions as the
coordinator (SAGAWIRE_DEFINITIONS_FILE, contract/sagas.yaml) and reacts to the
events the participants' catalogue declares, as the steps' ``after:`` lists say:

- **Forward.** A step of this service runs once every step it comes ``after`` has
  succeeded: steps after the same step react to the same event (they run in
  parallel, as in orchestration), and a step after several *joins* them. Which of
  its predecessors' events a service has heard is kept per saga in
  ``saga_progress``, in the consumer's transaction (with the inbox record and the
  offset), so a join survives restarts and redeliveries.
- **Backward.** A rejection of a step before the pivot turns the saga back, as in
  orchestration: each step of this service that may have taken effect is
  compensated once every step after it is compensated, or can no longer run (it is
  the rejected step or comes after it). So compensations run in reverse dependency
  order, siblings side by side, and the first step's (the order cancelled) runs last.
  Once a service has heard of a rejection it starts no further step of that saga.

A step compensated before its execute arrived (the rejection of a parallel branch
came first) is a null compensation at the barrier, which refuses the late execute;
it still publishes the step's compensation event, so the steps before it are not
left waiting. Every compensation is bound to its execute by the barrier's
fingerprint, so its payload carries the same bound fields: the saga's data as the
events heard of that saga carried it.

A reaction calls the very same :class:`~common.participant.Action` as the
participant edge, through the same barrier, keyed by the same (saga, step) as the
coordinator would use, so there is one set of business rules and a redelivered
event has no second effect. Reactions ignore sagas that were not started in
choreography mode, so one stack can run both kinds side by side.

**Only sagas the coordinator started.** A chain of reactions starts with an event of
a saga's first step, which only the coordinator's call makes: mutual TLS lets only
the coordinator call ``Execute`` (and only the named producers' events reach a
reaction), and a participant refuses an ``Execute`` in choreography mode of an
action that, here, only an event starts (:func:`started_by_events`), so nobody can
enter a chain halfway with data of their own. A stack whose mode is orchestration
(``SAGAWIRE_MODE``) runs no reactions at all. The first step computes what the
chain acts on (the order's total, from the order service's own prices), and every
effect is bound to its saga by the barrier's fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from google.protobuf.message import Message

from common.config import RetentionSettings
from common.errors import Aborted, RequestMismatch, SagaExpired, SagawireError
from common.inbox import PoisonEvent, Reaction
from common.participant import MODE_HEADER, Action, ActionRunner, StepContext
from common.participant_telemetry import ReactionStep
from common.retention import Pruning, delete_oldest
from common.store import Connection, Store, utc_now
from contract.definitions import DEFAULT_SAGA, Definitions, EventKind, SagaDefinition, Step
from contract.messages import overlay
from protos.sagawire.v1 import events_pb2, order_saga_pb2, participant_pb2

log = logging.getLogger(__name__)

CHOREOGRAPHY = participant_pb2.SAGA_MODE_CHOREOGRAPHY
# Producers send a consumer only the events of choreographed sagas.
CHOREOGRAPHED_ONLY = {MODE_HEADER: "choreography"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS saga_progress (
    saga_id  TEXT NOT NULL,
    step     TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('succeeded', 'rejected', 'compensated')),
    -- the event's sagawire.v1.OrderSagaEvent: the saga's data as that step left it
    event    BLOB NOT NULL,
    heard_at TEXT NOT NULL,
    PRIMARY KEY (saga_id, step, kind)
);
"""


@dataclass(frozen=True)
class Heard:
    """One step's outcome in a saga, as its event told a service."""

    step: str
    kind: EventKind
    event: events_pb2.OrderSagaEvent


@dataclass(frozen=True)
class Moves:
    """What a service does for a saga after an event: steps to run, steps to undo."""

    execute: tuple[Step, ...] = ()
    compensate: tuple[Step, ...] = ()

    def actions(self) -> list[str]:
        """The actions (and compensations) these moves call."""
        undo = [s.compensation for s in self.compensate if s.compensation is not None]
        return [*undo, *(s.action for s in self.execute)]


def moves(definition: SagaDefinition, service: str, heard: Sequence[Heard], latest: Heard) -> Moves:
    """What ``service`` does for a saga now that it heard ``latest``.

    ``heard`` is everything the service heard of the saga, ``latest`` included. Pure:
    the same rules as the runner's (coordinator/engine/), read off the same definition.
    """
    compensable = {s.name for s in definition.compensable}
    failed = [h.step for h in heard if h.kind is EventKind.REJECTED and h.step in compensable]
    mine = [s for s in definition.steps if s.participant == service]
    if not failed:
        if latest.kind is not EventKind.SUCCEEDED:
            return Moves()
        succeeded = {h.step for h in heard if h.kind is EventKind.SUCCEEDED}
        return Moves(
            execute=tuple(
                s for s in mine if latest.step in s.after and succeeded.issuperset(s.after)
            )
        )
    # Turned back: a step is undone, or can no longer run (rejected, or after a rejection).
    settled = {h.step for h in heard if h.kind is EventKind.COMPENSATED}
    for step in failed:
        settled |= {step, *definition.descendants(step)}
    news = latest.kind is EventKind.REJECTED and latest.step in compensable
    return Moves(
        compensate=tuple(
            s
            for s in mine
            if s.compensation is not None
            and s.name in compensable
            and s.name not in settled
            and settled.issuperset(definition.dependents.get(s.name, ()))
            and (news or latest.step in definition.dependents.get(s.name, ()))
        )
    )


def _produced(definition: SagaDefinition, producer: str) -> list[tuple[str, EventKind, str]]:
    """(step, kind, event type) of every event ``producer`` publishes in the saga."""
    return [
        (step.name, kind, event_type)
        for step in definition.steps
        if step.participant == producer
        for kind in EventKind
        if (event_type := step.events.of(kind)) is not None
    ]


def _movable(
    definition: SagaDefinition, service: str, heard: str, kind: EventKind
) -> list[ReactionStep]:
    """The steps of ``service`` that news of that ``kind`` about step ``heard`` can move
    (:func:`moves` says whether it does, given what else was heard)."""
    found = []
    for step in definition.steps:
        if step.participant != service:
            continue
        if kind is EventKind.SUCCEEDED:
            if heard in step.after:
                found.append(ReactionStep(definition.name, step.name, step.action))
            continue
        if step.compensation is None or step.name in definition.forward_only:
            continue
        undo = ReactionStep(definition.name, step.name, step.compensation, compensate=True)
        if kind is EventKind.COMPENSATED:
            if heard in definition.dependents.get(step.name, ()):
                found.append(undo)
        # A rejection turns the saga back unless it comes after the pivot, and this step
        # has something to undo unless it comes after the rejected step (it never ran).
        elif (
            heard not in definition.forward_only
            and heard != step.name
            and step.name not in definition.descendants(heard)
        ):
            found.append(undo)
    return found


def _candidates(
    definitions: Definitions, service: str, producer: str
) -> dict[str, set[ReactionStep]]:
    found: dict[str, set[ReactionStep]] = {}
    for definition in definitions.sagas.values():
        for step, kind, event_type in _produced(definition, producer):
            for movable in _movable(definition, service, step, kind):
                found.setdefault(event_type, set()).add(movable)
    return found


def subscriptions(definitions: Definitions, service: str) -> dict[str, set[str]]:
    """The event types ``service`` reacts to, by the producer that publishes them: its
    steps' predecessors' successes, and, for its steps that can be undone, the
    rejections that turn their saga back once they may have run, and their successors'
    compensations."""
    wanted = {
        producer: set(_candidates(definitions, service, producer))
        for producer in definitions.participants
    }
    return {producer: types for producer, types in wanted.items() if types}


def reaction_steps(
    definitions: Definitions, service: str, producer: str
) -> dict[str, ReactionStep]:
    """The saga step ``service`` may move on each event type of ``producer``, for traces
    and metrics: each attempt at such a reaction is an attempt of that step (its outcome
    is ``ignored`` when the event moved nothing yet: half a join, an undo still waiting
    for the steps after it). An event type that may move several steps names none."""
    candidates = _candidates(definitions, service, producer)
    return {t: next(iter(steps)) for t, steps in candidates.items() if len(steps) == 1}


def started_by_events(definitions: Definitions, service: str) -> frozenset[str]:
    """The actions of ``service`` that, in choreography, only another step's event
    starts: never a call (the coordinator starts a choreographed saga at its first
    steps). An action that starts some saga is not one of them."""
    steps = [s for d in definitions.sagas.values() for s in d.steps if s.participant == service]
    first = {s.action for s in steps if not s.after}
    return frozenset(s.action for s in steps if s.after) - first


def pruning(db: Store, settings: RetentionSettings) -> Pruning:
    """Retention of ``saga_progress`` (common/retention.py): what a service heard goes once
    the barrier's window (days; plus the clock skew allowed) has passed since it heard it.
    By then the saga is that far past its deadline (seconds to minutes): a step of it
    that never ran here is refused by the barrier's horizon, and the outbox and inbox
    that could redeliver its events keep them for the same window. The trade is the
    barrier's (common/barrier.py): a saga still being undone after days would have to
    be finished by hand."""
    keep = timedelta(seconds=settings.retention_barrier + settings.retention_clock_skew)

    def batch(now: datetime, limit: int) -> Awaitable[int]:
        return db.transaction(
            lambda conn: delete_oldest(conn, "saga_progress", "heard_at", now - keep, limit)
        )

    return Pruning("saga_progress", batch)


def _remember(conn: Connection, saga_id: str, heard: Heard) -> None:
    conn.execute(
        "INSERT INTO saga_progress (saga_id, step, kind, event, heard_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (
            saga_id,
            heard.step,
            heard.kind.value,
            heard.event.SerializeToString(),
            utc_now().isoformat(),
        ),
    )


def _recall(conn: Connection, saga_id: str) -> list[Heard]:
    rows = conn.execute(
        "SELECT step, kind, event FROM saga_progress WHERE saga_id = ? ORDER BY rowid",
        (saga_id,),
    )
    decode = events_pb2.OrderSagaEvent.FromString
    return [Heard(row["step"], EventKind(row["kind"]), decode(row["event"])) for row in rows]


class Reactions:
    """One service's reactions to the others' events, built from the definitions."""

    def __init__(self, service: str, definitions: Definitions, runner: ActionRunner) -> None:
        self.service = service
        self.definitions = definitions
        self.runner = runner

    def steps_of(self, producer: str) -> dict[str, ReactionStep]:
        """The step each event type of ``producer`` may move here (traces and metrics of
        an attempt the fault hook refused before its transaction; :meth:`step_of` decides
        once the event is applied)."""
        return reaction_steps(self.definitions, self.service, producer)

    def step_of(self, conn: Connection, event: events_pb2.Event) -> ReactionStep | None:
        """The step the reaction to ``event`` runs now, given what was heard before (inside
        the consumer's transaction, before the reaction): an attempt of that step in traces
        and metrics. None when it runs none (half a join, an undo still waiting) or several."""
        try:
            found = self._read(event)
        except PoisonEvent:
            return None
        if found is None:
            return None
        definition, latest = found
        planned = moves(definition, self.service, [*_recall(conn, event.subject), latest], latest)
        steps = [
            *(
                ReactionStep(definition.name, s.name, s.compensation or "", True)
                for s in planned.compensate
            ),
            *(ReactionStep(definition.name, s.name, s.action) for s in planned.execute),
        ]
        return steps[0] if len(steps) == 1 else None

    def by_producer(self) -> dict[str, dict[str, Reaction]]:
        """The reaction to each event type this service follows, by producer."""
        return {
            producer: dict.fromkeys(sorted(types), self.react)
            for producer, types in subscriptions(self.definitions, self.service).items()
        }

    def _read(self, event: events_pb2.Event) -> tuple[SagaDefinition, Heard] | None:
        """The saga definition and the step outcome an event reports; None for an
        orchestrated saga's event. Raises PoisonEvent for one nobody could act on."""
        saga_event = events_pb2.OrderSagaEvent()
        if not event.data.Unpack(saga_event):
            raise PoisonEvent(
                f"payload is {event.data.type_url!r}, not a sagawire.v1.OrderSagaEvent"
            )
        if saga_event.mode != CHOREOGRAPHY:
            return None  # an orchestrated saga: the coordinator drives it
        name = saga_event.saga or DEFAULT_SAGA
        definition = self.definitions.get(name)
        if definition is None:
            raise PoisonEvent(f"no saga definition {name!r} (SAGAWIRE_DEFINITIONS_FILE)")
        try:
            step = definition.step(saga_event.step)
        except KeyError:
            raise PoisonEvent(f"saga {name!r} has no step {saga_event.step!r}") from None
        kind = step.events.kind_of(event.type)
        if kind is None:
            raise PoisonEvent(f"{event.type!r} is not an event of step {name}.{step.name}")
        return definition, Heard(step.name, kind, saga_event)

    def react(self, conn: Connection, event: events_pb2.Event) -> None:
        """Hear an event inside the consumer's transaction, and make the moves it allows."""
        found = self._read(event)
        if found is None:
            return
        definition, latest = found
        saga_id = event.subject
        _remember(conn, saga_id, latest)
        heard = _recall(conn, saga_id)
        planned = moves(definition, self.service, heard, latest)
        for step in planned.compensate:
            self._compensate(conn, definition, saga_id, step, heard)
        for step in planned.execute:
            self._execute(conn, definition, saga_id, step, heard)

    async def actions_for(self, db: Store, event: events_pb2.Event) -> list[str]:
        """The actions an event would call now (fault injection draws for each of them),
        read from a snapshot: what another consumer of this service commits meanwhile
        may change the moves the transaction then makes."""
        try:
            found = self._read(event)
        except PoisonEvent:
            return []
        if found is None:
            return []
        definition, latest = found
        heard = await db.read(lambda conn: _recall(conn, event.subject))
        return moves(definition, self.service, [*heard, latest], latest).actions()

    def _action(self, step: Step, data: order_saga_pb2.OrderSagaData) -> Action[Message]:
        action = self.runner.by_action.get(step.action)
        if action is None:
            raise PoisonEvent(f"{self.service} has no action {step.action!r}")
        try:
            action.validate(data)
        except SagawireError as error:
            raise PoisonEvent(f"invalid saga data: {error.message}") from error
        return action

    def _execute(
        self,
        conn: Connection,
        definition: SagaDefinition,
        saga_id: str,
        step: Step,
        heard: Sequence[Heard],
    ) -> None:
        """Run ``step`` with the saga's data as the steps it comes after left it."""
        succeeded = {h.step: h.event.data for h in heard if h.kind is EventKind.SUCCEEDED}
        data = order_saga_pb2.OrderSagaData()
        for before in step.after:
            overlay(data, succeeded[before])
        action = self._action(step, data)
        ctx = StepContext(saga_id, step.name, CHOREOGRAPHY, definition.name)
        try:
            self.runner.execute_in(conn, action, ctx, data)
        except Aborted:
            log.info("late event ignored saga=%s step=%s (already compensated)", saga_id, step.name)
        except SagaExpired:
            # A saga older than the barrier's window: a late event of a finished saga
            # (retention removed its rows). Nothing ran; no event answers it, so a long
            # finished saga is never unwound (common/barrier.py).
            log.info("late event ignored saga=%s step=%s (expired)", saga_id, step.name)
        except RequestMismatch as refused:
            # Another request holds the step's key: nothing ran. The execute answers the
            # chain with its rejection event, so the saga unwinds instead of stalling.
            log.warning("event refused saga=%s step=%s: %s", saga_id, step.name, refused)
            self.runner.refused_in(conn, action, ctx, data, refused)

    def _compensate(
        self,
        conn: Connection,
        definition: SagaDefinition,
        saga_id: str,
        step: Step,
        heard: Sequence[Heard],
    ) -> None:
        """Undo ``step`` with the saga's data as heard, and why the saga turned back."""
        data = order_saga_pb2.OrderSagaData()
        for news in heard:
            overlay(data, news.event.data)
        compensable = {s.name for s in definition.compensable}
        failure = next(h for h in heard if h.kind is EventKind.REJECTED and h.step in compensable)
        if definition.reason_field:
            # The same words the coordinator uses (records.Failure.describe).
            why = f"{failure.step}: {failure.event.reason}"
            if failure.event.message:
                why += f" ({failure.event.message})"
            setattr(data, definition.reason_field, why[:200])
        action = self._action(step, data)
        ctx = StepContext(saga_id, step.name, CHOREOGRAPHY, definition.name)
        # A different request holding the key raises RequestMismatch: a compensation that
        # undoes nothing is a poison event, kept for a look.
        self.runner.compensate_in(conn, action, ctx, data)
