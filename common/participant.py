"""The generic Participant servicer: the execute/compensate edge of every domain service.

A service declares its actions as data (:class:`Action`); this module validates
the request, applies fault injection, and runs the action through the barrier
and the outbox inside one SQLite transaction. ``SagasFinished`` notes the sagas the
coordinator says finished, so retention lets their barrier rows go after the window.
What an action publishes when it succeeds, is rejected or is compensated is the saga
definitions' to say, not the action's: the runner asks its :class:`Announcer`
(services/saga_events.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from common import barrier, outbox
from common.errors import (
    Aborted,
    BusinessRejection,
    InvalidArgument,
    RequestMismatch,
    SagaExpired,
)
from common.faults import FaultInjector
from common.logs import printable
from common.participant_telemetry import (
    barrier_decided,
    barrier_refused,
    counted_call,
)
from common.store import Connection, Store, utc_now
from common.telemetry import inject_headers
from contract.limits import MAX_FINISHED_PER_CALL, MAX_ID_LENGTH, MAX_PAYLOAD_BYTES
from contract.messages import pack
from contract.modes import MODE_NAMES
from protos.sagawire.v1 import participant_pb2, participant_pb2_grpc

_P = TypeVar("_P", bound=Message)


@dataclass(frozen=True)
class StepContext:
    """Who is asking: the idempotency key, the saga's mode and its definition's name."""

    saga_id: str
    step: str
    mode: int
    saga: str = ""


# (event type, payload) to publish through the outbox in the same transaction.
Emitted = tuple[str, Message]


class Announcer(Protocol):
    """The events a service's actions publish, by action name (None: publish nothing)."""

    def executed(
        self, action: str, ctx: StepContext, payload: Message, result: Message
    ) -> Emitted | None: ...

    def rejected(
        self, action: str, ctx: StepContext, payload: Message, rejection: BusinessRejection
    ) -> Emitted | None: ...

    def compensated(self, action: str, ctx: StepContext, payload: Message) -> Emitted | None: ...


@dataclass(frozen=True)
class Action(Generic[_P]):
    """One saga action of a service and its compensation, as data.

    ``execute`` returns the fields it adds to the saga's data; ``compensate``
    gets the payload and what ``execute`` returned. Both run inside the
    barrier's transaction and must raise only domain errors.

    ``binds`` names the payload fields that make a request this action's request
    for its saga (the order, customer, amount... it acts on): the barrier's
    fingerprint covers them, so a different request under the same key is refused
    (:func:`common.barrier.fingerprint`). They must have the same values in every
    request of the step, its compensation's included, in both modes: the saga's
    input and what the steps before it filled in, never a later step's result or a
    note like the cancel reason. Empty: the whole payload.
    """

    name: str
    payload_type: type[_P]
    validate: Callable[[_P], None]
    execute: Callable[[Connection, StepContext, _P], _P]
    # None for a final action that is never compensated (e.g. approve_order).
    compensation: str | None = None
    compensate: Callable[[Connection, StepContext, _P, _P], None] | None = None
    binds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        known = self.payload_type.DESCRIPTOR.fields_by_name
        unknown = [name for name in self.binds if name not in known]
        if unknown:
            raise ValueError(f"action {self.name!r} binds unknown payload fields {unknown}")

    def fingerprint(self, payload: _P) -> str:
        """The barrier's fingerprint of a request of this action (or its compensation)."""
        return barrier.fingerprint(self.name, payload, self.binds)


def require_id(value: str, field: str) -> None:
    """An id must be present and of sane length."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_ID_LENGTH} characters")


def refuse_second_step(ctx: StepContext, effect: str) -> NoReturn:
    """Refuse an execute that would give the saga a second ``effect`` ("an order", "a
    charge") under another step name: the barrier keys on (saga, step), so only the
    action can tell. A :class:`RequestMismatch`: recorded and replayed under this step's
    key like any rejection, its compensation null, the first step's effect untouched."""
    raise RequestMismatch(
        f"saga {ctx.saga_id} already has {effect} from another step;"
        f" step {ctx.step!r} refused, nothing done"
    )


def unpack_payload(packed: any_pb2.Any, payload_type: type[_P], field: str = "payload") -> _P:
    """Unpack an Any into the expected message type, or name the field that is wrong."""
    if packed.ByteSize() > MAX_PAYLOAD_BYTES:
        raise InvalidArgument(field, f"must be at most {MAX_PAYLOAD_BYTES} bytes")
    message = payload_type()
    expected = payload_type.DESCRIPTOR.full_name
    try:
        unpacked = bool(packed.type_url) and packed.Unpack(message)
    except DecodeError:
        raise InvalidArgument(field, f"is not a valid {expected}") from None
    if not unpacked:
        got = printable(packed.type_url, MAX_ID_LENGTH) if packed.type_url else "nothing"
        raise InvalidArgument(field, f"must be a {expected}, got {got}")
    return message


# Every event says how its saga runs, so consumers can ask producers for one mode only.
MODE_HEADER = outbox.MODE_HEADER

_SAGA_MODES = frozenset(participant_pb2.SagaMode.values())
EXECUTE, COMPENSATE = "execute", "compensate"

_OUTCOMES = {
    barrier.BarrierOutcome.APPLIED: participant_pb2.BARRIER_OUTCOME_APPLIED,
    barrier.BarrierOutcome.REPLAYED: participant_pb2.BARRIER_OUTCOME_REPLAYED,
    barrier.BarrierOutcome.NULL_COMPENSATION: participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION,
}


class ActionRunner:
    """Runs a service's actions through the barrier and outbox; shared by the
    Participant servicer (orchestration) and the event reactions (choreography).

    ``announce`` says which event each outcome publishes (none: publish nothing). A
    compensation publishes its event even when the barrier found nothing to undo (a
    null compensation): the step is undone either way, and in choreography the steps
    before it wait for that news (not for a saga past the barrier's horizon, long over).
    """

    def __init__(
        self,
        db: Store,
        events: outbox.Outbox,
        actions: Mapping[str, Action[Message]],
        horizon: Callable[[], datetime | None] = lambda: None,
        announce: Announcer | None = None,
    ) -> None:
        self.db = db
        self.events = events
        # The barrier's horizon now (common/barrier.py); None: none.
        self.horizon = horizon
        self.announce = announce
        self.by_action = dict(actions)
        self.by_compensation = {
            a.compensation: a for a in actions.values() if a.compensation is not None
        }

    def execute_in(
        self, conn: Connection, action: Action[Message], ctx: StepContext, payload: Message
    ) -> barrier.Guarded:
        """Execute inside an open transaction (the reactions add their inbox record to it)."""

        def run() -> bytes:
            result = action.execute(conn, ctx, payload)
            if self.announce is not None:
                _emit(conn, ctx, self.announce.executed(action.name, ctx, payload, result))
            return pack(result).SerializeToString()

        try:
            guarded = barrier.guarded_execute(
                conn,
                ctx.saga_id,
                ctx.step,
                run,
                fingerprint=action.fingerprint(payload),
                horizon=self.horizon(),
            )
        except (Aborted, RequestMismatch) as refused:
            barrier_refused(action.name, EXECUTE, refused)
            raise
        except SagaExpired as expired:
            barrier_refused(action.name, EXECUTE, expired)  # past the horizon
            raise
        barrier_decided(action.name, EXECUTE, guarded.outcome.value, guarded.rejection)
        if (
            guarded.rejection is not None
            and guarded.outcome is barrier.BarrierOutcome.APPLIED
            and self.announce is not None
        ):
            rejected = self.announce.rejected(action.name, ctx, payload, guarded.rejection)
            _emit(conn, ctx, rejected)
        return guarded

    def refused_in(
        self,
        conn: Connection,
        action: Action[Message],
        ctx: StepContext,
        payload: Message,
        refusal: BusinessRejection,
    ) -> None:
        """Publish the action's rejection event for a request the barrier refused, so a
        choreographed saga hears a "no" and unwinds (nothing is recorded: it did nothing)."""
        if self.announce is not None:
            _emit(conn, ctx, self.announce.rejected(action.name, ctx, payload, refusal))

    def compensate_in(
        self, conn: Connection, action: Action[Message], ctx: StepContext, payload: Message
    ) -> barrier.Guarded:
        """Compensate inside an open transaction."""

        def run(first_result: bytes) -> bytes:
            result = action.payload_type()
            any_pb2.Any.FromString(first_result).Unpack(result)
            assert action.compensate is not None  # only compensable actions are looked up
            action.compensate(conn, ctx, payload, result)
            return b""

        # The execute's fingerprint: a compensation is bound to the request it undoes.
        compensation = action.compensation or action.name
        horizon = self.horizon()
        try:
            guarded = barrier.guarded_compensate(
                conn,
                ctx.saga_id,
                ctx.step,
                run,
                fingerprint=action.fingerprint(payload),
                horizon=horizon,
            )
        except RequestMismatch as refused:
            barrier_refused(compensation, COMPENSATE, refused)
            raise
        barrier_decided(compensation, COMPENSATE, guarded.outcome.value)
        undone = guarded.outcome is barrier.BarrierOutcome.APPLIED or (
            # A saga past the horizon finished long ago: nobody waits for its news.
            guarded.outcome is barrier.BarrierOutcome.NULL_COMPENSATION
            and not barrier.expired(ctx.saga_id, horizon)
        )
        if undone and self.announce is not None:
            _emit(conn, ctx, self.announce.compensated(action.name, ctx, payload))
        return guarded

    async def execute(
        self, action: Action[Message], ctx: StepContext, payload: Message
    ) -> barrier.Guarded:
        guarded = await self.db.transaction(
            lambda conn: self.execute_in(conn, action, ctx, payload)
        )
        # Every event of this transaction carries the saga's mode (see _emit).
        await self.events.notify(MODE_NAMES.get(ctx.mode, ""))
        return guarded

    async def compensate(
        self, action: Action[Message], ctx: StepContext, payload: Message
    ) -> barrier.Guarded:
        guarded = await self.db.transaction(
            lambda conn: self.compensate_in(conn, action, ctx, payload)
        )
        # Every event of this transaction carries the saga's mode (see _emit).
        await self.events.notify(MODE_NAMES.get(ctx.mode, ""))
        return guarded


def _emit(conn: Connection, ctx: StepContext, emitted: Emitted | None) -> None:
    """Publish an event about the saga through the outbox, with the current trace context:
    the span of the call or of the reaction that made it. Writing to the outbox is local
    work, not a hop, so it gets no span of its own; the event's consumer continues it."""
    if emitted is None:
        return
    event_type, data = emitted
    headers = inject_headers({MODE_HEADER: MODE_NAMES.get(ctx.mode, "")})
    outbox.append(conn, event_type, ctx.saga_id, data, headers=headers)


class ParticipantServicer(participant_pb2_grpc.ParticipantServicer):
    """``Execute`` / ``Compensate`` for one service, driven by its action table.

    ``started_by_events`` are the actions that, in choreography, run only as a
    reaction to another service's event: the coordinator starts a choreographed
    saga with its first step(s) only, so an ``Execute`` of one of these in
    choreography mode is refused (it would start a chain halfway, with the data its
    caller made up). In orchestration mode they are called like any other.
    """

    def __init__(
        self,
        runner: ActionRunner,
        faults: FaultInjector,
        started_by_events: frozenset[str] = frozenset(),
    ) -> None:
        self._runner = runner
        self._faults = faults
        self._started_by_events = started_by_events

    def _parse(
        self, request: participant_pb2.StepRequest, table: Mapping[str, Action[Message]]
    ) -> tuple[Action[Message], StepContext, Message]:
        require_id(request.saga_id, "saga_id")
        require_id(request.step, "step")
        action = table.get(request.action)
        if action is None:
            known = ", ".join(sorted(table)) or "none"
            raise InvalidArgument(
                "action",
                f"unknown action {printable(request.action, MAX_ID_LENGTH)} (known: {known})",
            )
        if request.mode not in _SAGA_MODES:
            raise InvalidArgument("mode", f"unknown saga mode {request.mode}")
        payload = unpack_payload(request.payload, action.payload_type)
        action.validate(payload)
        ctx = StepContext(request.saga_id, request.step, request.mode, request.saga)
        return action, ctx, payload

    async def Execute(
        self, request: participant_pb2.StepRequest, context: grpc.aio.ServicerContext
    ) -> participant_pb2.StepReply:
        action, ctx, payload = self._parse(request, self._runner.by_action)
        if ctx.mode == participant_pb2.SAGA_MODE_CHOREOGRAPHY and (
            action.name in self._started_by_events
        ):
            raise InvalidArgument(
                "mode",
                f"in choreography {action.name!r} runs only as a reaction to an event;"
                " a choreographed saga starts at its first step",
            )
        with counted_call(action.name, EXECUTE, MODE_NAMES.get(ctx.mode, "")):
            await self._faults.before_call(action.name)
            guarded = await self._runner.execute(action, ctx, payload)
            if guarded.rejection is not None:
                raise guarded.rejection
        return participant_pb2.StepReply(
            result=any_pb2.Any.FromString(guarded.result), outcome=_OUTCOMES[guarded.outcome]
        )

    async def Compensate(
        self, request: participant_pb2.StepRequest, context: grpc.aio.ServicerContext
    ) -> participant_pb2.StepReply:
        action, ctx, payload = self._parse(request, self._runner.by_compensation)
        with counted_call(request.action, COMPENSATE, MODE_NAMES.get(ctx.mode, "")):
            await self._faults.before_call(request.action)
            guarded = await self._runner.compensate(action, ctx, payload)
        return participant_pb2.StepReply(outcome=_OUTCOMES[guarded.outcome])

    async def SagasFinished(
        self, request: participant_pb2.SagasFinishedRequest, context: grpc.aio.ServicerContext
    ) -> participant_pb2.SagasFinishedReply:
        if len(request.saga_ids) > MAX_FINISHED_PER_CALL:
            raise InvalidArgument("saga_ids", f"must list at most {MAX_FINISHED_PER_CALL} sagas")
        for number, saga_id in enumerate(request.saga_ids):
            require_id(saga_id, f"saga_ids[{number}]")
        now = utc_now()
        marked = await self._runner.db.transaction(
            lambda conn: barrier.mark_finished(conn, request.saga_ids, now)
        )
        return participant_pb2.SagasFinishedReply(marked=marked)
