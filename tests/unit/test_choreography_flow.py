"""The choreography's rules, read off the definition: who reacts to what, in any arrival order.

:func:`services.choreography.moves` is pure, so the services' flow is checked here in
milliseconds: parallel steps react to the same event, a step after several joins them,
a rejection undoes what ran in reverse dependency order (a null compensation for a step
whose execute had not arrived yet), and a change of one ``after:`` list changes the flow.
A small simulation delivers each producer's events to its consumers in every order
hypothesis finds, with the barrier's rules, and checks the outcome a saga must reach.
"""

from __future__ import annotations

import copy
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import RetentionSettings
from common.store import Database
from contract.definitions import (
    DEFAULT_FILE,
    EventKind,
    SagaDefinition,
    load_definitions,
    parse_definitions,
)
from protos.sagawire.v1 import events_pb2, order_saga_pb2
from services import choreography, saga_events
from services.choreography import (
    Heard,
    moves,
    reaction_steps,
    started_by_events,
    subscriptions,
)

SHIPPED = load_definitions()
PLACE = SHIPPED.sagas["place_order"]
RETURN = SHIPPED.sagas["return_order"]


def _serial_definitions() -> SagaDefinition:
    """place_order with charge_payment after reserve_stock instead of beside it."""
    raw: dict[str, Any] = copy.deepcopy(yaml.safe_load(DEFAULT_FILE.read_text()))
    for step in raw["sagas"]["place_order"]["steps"]:
        if step["name"] == "charge_payment":
            step["after"] = ["reserve_stock"]
    return parse_definitions(raw).sagas["place_order"]


SERIAL = _serial_definitions()


def heard(step: str, kind: EventKind, reason: str = "") -> Heard:
    return Heard(step, kind, events_pb2.OrderSagaEvent(step=step, reason=reason))


def names(steps: tuple[Any, ...]) -> list[str]:
    return [s.name for s in steps]


OK, NO, UNDONE = EventKind.SUCCEEDED, EventKind.REJECTED, EventKind.COMPENSATED


def test_parallel_steps_react_to_the_same_event() -> None:
    created = heard("create_order", OK)
    assert names(moves(PLACE, "inventory", [created], created).execute) == ["reserve_stock"]
    assert names(moves(PLACE, "payment", [created], created).execute) == ["charge_payment"]
    assert moves(PLACE, "shipping", [created], created) == moves(PLACE, "shipping", [], created)


def test_a_step_after_two_joins_them_in_either_order() -> None:
    reserved, charged = heard("reserve_stock", OK), heard("charge_payment", OK)
    for first, second in ((reserved, charged), (charged, reserved)):
        assert not moves(PLACE, "shipping", [first], first).execute
        joined = moves(PLACE, "shipping", [first, second], second)
        assert names(joined.execute) == ["schedule_shipment"]


def test_a_rejection_in_a_parallel_branch_undoes_the_other_branch() -> None:
    created, declined = heard("create_order", OK), heard("charge_payment", NO, "NO_FUNDS")
    # Reserved first, or not yet: the release is due either way (a null compensation
    # at the barrier if the reserve has not arrived; the late reserve is then refused).
    for history in ([created, declined], [declined]):
        assert names(moves(PLACE, "inventory", history, declined).compensate) == ["reserve_stock"]
    # Once it heard of the rejection, inventory starts nothing more of that saga.
    late = moves(PLACE, "inventory", [declined, created], created)
    assert not late.execute and not late.compensate


def test_compensations_run_in_reverse_dependency_order() -> None:
    failed = heard("schedule_shipment", NO, "UNSERVICEABLE_DESTINATION")
    # Both branches are undone at once: nothing that ran after them can run any more.
    assert names(moves(PLACE, "inventory", [failed], failed).compensate) == ["reserve_stock"]
    assert names(moves(PLACE, "payment", [failed], failed).compensate) == ["charge_payment"]
    # The order is cancelled last, once both are undone.
    released, refunded = heard("reserve_stock", UNDONE), heard("charge_payment", UNDONE)
    assert not moves(PLACE, "order", [failed], failed).compensate
    assert not moves(PLACE, "order", [failed, released], released).compensate
    last = moves(PLACE, "order", [failed, released, refunded], refunded)
    assert names(last.compensate) == ["create_order"]
    assert last.actions() == ["cancel_order"]


def test_an_undo_heard_before_the_rejection_waits_for_it() -> None:
    released, declined = heard("reserve_stock", UNDONE), heard("charge_payment", NO)
    assert not moves(PLACE, "order", [released], released).compensate
    assert names(moves(PLACE, "order", [released, declined], declined).compensate) == [
        "create_order"
    ]


def test_changing_one_dependency_changes_the_flow() -> None:
    created, reserved, charged = (
        heard("create_order", OK),
        heard("reserve_stock", OK),
        heard("charge_payment", OK),
    )
    assert not moves(SERIAL, "payment", [created], created).execute
    after_reserve = moves(SERIAL, "payment", [created, reserved], reserved)
    assert names(after_reserve.execute) == ["charge_payment"]
    assert names(moves(SERIAL, "shipping", [reserved, charged], charged).execute) == [
        "schedule_shipment"
    ]
    payment = subscriptions(only_saga(SERIAL), "payment")
    assert payment["inventory"] >= {saga_events.STOCK_RESERVED}
    assert saga_events.ORDER_CREATED not in payment.get("order", set())
    # A declined charge now undoes the reserve that came before it.
    declined = heard("charge_payment", NO)
    assert names(moves(SERIAL, "inventory", [declined], declined).compensate) == ["reserve_stock"]


def test_the_services_follow_the_declared_events() -> None:
    wanted = subscriptions(SHIPPED, "shipping")
    assert wanted == {
        "inventory": {saga_events.STOCK_RESERVED},
        "payment": {saga_events.PAYMENT_CHARGED},
    }
    order = subscriptions(SHIPPED, "order")
    assert saga_events.SHIPMENT_SCHEDULED in order["shipping"]
    assert saga_events.SHIPMENT_FAILED in order["shipping"]  # the saga turned back
    assert {saga_events.STOCK_RELEASED, saga_events.STOCK_REJECTED} <= order["inventory"]
    assert "sagawire.inventory.restocked" in order["inventory"]  # return_order's close
    assert started_by_events(SHIPPED, "order") == {"approve_order", "close_return"}
    assert started_by_events(SHIPPED, "payment") == {"charge", "refund_return"}


def test_the_event_names_clients_use_are_the_declared_ones() -> None:
    expected = {
        saga_events.ORDER_CREATED,
        saga_events.ORDER_APPROVED,
        saga_events.ORDER_CANCELLED,
        saga_events.ORDER_REJECTED,
        saga_events.STOCK_RESERVED,
        saga_events.STOCK_REJECTED,
        saga_events.STOCK_RELEASED,
        saga_events.PAYMENT_CHARGED,
        saga_events.PAYMENT_DECLINED,
        saga_events.PAYMENT_REFUNDED,
        saga_events.SHIPMENT_SCHEDULED,
        saga_events.SHIPMENT_FAILED,
        saga_events.SHIPMENT_CANCELLED,
    }
    assert {t for s in PLACE.steps for k in EventKind if (t := s.events.of(k))} == expected


# --- a simulation: every producer's events, delivered in any interleaving ----------------


@dataclass
class World:
    """One saga on the services' side: their barriers, their outboxes, what they heard."""

    definition: SagaDefinition
    rejects: frozenset[str]
    outbox: dict[str, list[tuple[str, Heard]]] = field(default_factory=dict)
    offsets: dict[tuple[str, str], int] = field(default_factory=dict)
    heard: dict[str, list[Heard]] = field(default_factory=dict)
    executed: set[str] = field(default_factory=set)  # took effect
    rejected: set[str] = field(default_factory=set)
    compensated: set[str] = field(default_factory=set)  # the barrier's marker, null or not
    effects: list[tuple[str, str]] = field(default_factory=list)

    def emit(self, step: str, kind: EventKind) -> None:
        spec = self.definition.step(step)
        event_type = spec.events.of(kind)
        assert event_type is not None
        news = Heard(step, kind, events_pb2.OrderSagaEvent(step=step))
        self.outbox.setdefault(spec.participant, []).append((event_type, news))

    def execute(self, step: str) -> None:
        if step in self.compensated or step in self.executed | self.rejected:
            return  # refused as hanging, or replayed: no effect, no event
        if step in self.rejects:
            self.rejected.add(step)
            self.emit(step, NO)
        else:
            self.executed.add(step)
            self.effects.append(("execute", step))
            self.emit(step, OK)

    def compensate(self, step: str) -> None:
        if step in self.compensated:
            return  # replayed
        self.compensated.add(step)
        if step in self.executed:
            self.effects.append(("compensate", step))
        self.emit(step, UNDONE)  # null or not, the step is undone

    def pending(self) -> list[tuple[str, str]]:
        """(consumer, producer) pairs with an event to deliver."""
        ready = []
        for service in SHIPPED.participants:
            for producer, types in subscriptions(only_saga(self.definition), service).items():
                events = self.outbox.get(producer, [])
                offset = self.offsets.get((service, producer), 0)
                if any(t in types for t, _ in events[offset:]):
                    ready.append((service, producer))
        return ready

    def deliver(self, service: str, producer: str) -> None:
        types = subscriptions(only_saga(self.definition), service)[producer]
        events = self.outbox[producer]
        offset = self.offsets.get((service, producer), 0)
        while events[offset][0] not in types:
            offset += 1
        _, news = events[offset]
        self.offsets[(service, producer)] = offset + 1
        history = self.heard.setdefault(service, [])
        history.append(news)
        planned = moves(self.definition, service, history, news)
        for step in planned.compensate:
            self.compensate(step.name)
        for step in planned.execute:
            self.execute(step.name)


_ONLY: dict[str, Any] = {}


def only_saga(definition: SagaDefinition) -> Any:
    key = f"{definition.name}:{id(definition)}"
    if key not in _ONLY:
        shipped = load_definitions()
        _ONLY[key] = type(shipped)(
            participants=shipped.participants,
            sagas={definition.name: definition},
            events=shipped.events,
        )
    return _ONLY[key]


def _settle(definition: SagaDefinition, rejects: frozenset[str], data: st.DataObject) -> World:
    world = World(definition, rejects)
    for root in definition.roots:  # the coordinator's call
        world.execute(root.name)
    if world.rejected:
        return world  # refused at the start: the coordinator ends it, nothing ran
    while ready := world.pending():
        world.deliver(*data.draw(st.sampled_from(ready)))
    return world


def _check(world: World) -> None:
    definition = world.definition
    compensable = {s.name for s in definition.compensable}
    if not world.rejected:
        assert world.executed == {s.name for s in definition.steps}
        assert not world.compensated
        return
    # Everything that took effect before the pivot is undone; nothing after it ran.
    assert world.executed <= compensable
    undone = [step for what, step in world.effects if what == "compensate"]
    assert set(undone) == world.executed
    # Undone in reverse dependency order: a step after its successors that had run.
    for what, step in world.effects:
        if what == "compensate":
            later = definition.descendants(step) & world.executed
            position = world.effects.index(("compensate", step))
            assert all(world.effects.index(("compensate", d)) < position for d in later)
    # A step is never compensated twice, nor executed after its compensation.
    assert len(undone) == len(set(undone))
    for step in undone:
        assert world.effects.index(("execute", step)) < world.effects.index(("compensate", step))
    # The first steps are undone last: the order is cancelled at the end.
    roots = {s.name for s in definition.roots} & world.executed
    if roots:
        assert world.effects[-1][0] == "compensate" and world.effects[-1][1] in roots


@settings(max_examples=150, deadline=None)
@given(
    definition=st.sampled_from([PLACE, SERIAL, RETURN]),
    rejecting=st.sets(
        st.sampled_from(["reserve_stock", "charge_payment", "schedule_shipment", "refund_payment"]),
        max_size=2,
    ),
    data=st.data(),
)
def test_any_arrival_order_ends_like_orchestration(
    definition: SagaDefinition, rejecting: set[str], data: st.DataObject
) -> None:
    steps = {s.name for s in definition.steps}
    world = _settle(definition, frozenset(rejecting & steps), data)
    _check(world)


def test_each_reaction_is_an_attempt_of_the_step_it_may_move() -> None:
    shipping = reaction_steps(SHIPPED, "shipping", "inventory")
    assert shipping[saga_events.STOCK_RESERVED].span_name == "step schedule_shipment"
    undo = reaction_steps(SHIPPED, "order", "inventory")[saga_events.STOCK_RELEASED]
    assert (undo.step, undo.action, undo.compensate) == ("create_order", "cancel_order", True)
    from_payment = reaction_steps(SHIPPED, "inventory", "payment")
    assert saga_events.PAYMENT_DECLINED in from_payment
    assert saga_events.PAYMENT_CHARGED not in from_payment  # inventory never waits for it
    assert from_payment["sagawire.payment.return_refunded"].step == "restock_items"


def test_a_return_flows_from_acceptance_to_closing() -> None:
    accepted = heard("accept_return", OK)
    assert names(moves(RETURN, "payment", [accepted], accepted).execute) == ["refund_payment"]
    refused = heard("refund_payment", NO, "ALREADY_REFUNDED")
    assert names(moves(RETURN, "order", [refused], refused).compensate) == ["accept_return"]
    restocked = heard("restock_items", OK)
    assert names(moves(RETURN, "order", [restocked], restocked).execute) == ["close_return"]
    assert order_saga_pb2.OrderSagaData.DESCRIPTOR.fields_by_name["placed_by_saga_id"]


async def test_what_was_heard_goes_after_the_barriers_window(tmp_path: Path) -> None:
    db = Database(tmp_path / "service.db", choreography.SCHEMA)
    await db.open()
    try:
        now = datetime(2026, 1, 10, tzinfo=UTC)
        heard_at = [now - timedelta(days=8), now - timedelta(days=1)]

        def fill(conn: sqlite3.Connection) -> None:
            for n, when in enumerate(heard_at):
                conn.execute(
                    "INSERT INTO saga_progress VALUES (?, 'create_order', 'succeeded', x'', ?)",
                    (f"s-{n}", when.isoformat()),
                )

        await db.transaction(fill)
        task = choreography.pruning(db, RetentionSettings(retention_barrier=7 * 86_400))
        assert await task.batch(now, 100) == 1
        left = await db.read(
            lambda conn: conn.execute("SELECT saga_id FROM saga_progress").fetchall()
        )
        assert [row[0] for row in left] == ["s-1"]
    finally:
        await db.close()
