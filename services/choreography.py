"""How the four services react to each other's events in choreography mode.

The flow (each arrow is an event one service publishes and another consumes):

    order created -> inventory reserves -> payment charges -> shipping schedules -> order approved
    stock rejected                                  -> order cancelled
    payment declined  -> inventory releases         -> order cancelled
    shipping failed   -> payment refunds -> inventory releases -> order cancelled

A reaction calls the very same :class:`~common.participant.Action` as the
participant edge, through the same barrier, keyed by the same (saga, step) as in
the ``place_order`` definition — so there is one set of business rules, and a
redelivered event has no second effect. Reactions ignore sagas that were not
started in choreography mode, so one stack can run both kinds side by side.

**Only sagas the coordinator started.** A chain of reactions starts with an event of
the saga's first step, which only the coordinator's call makes: mutual TLS lets only
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
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import Aborted, RequestMismatch, SagaExpired, SagawireError
from common.inbox import PoisonEvent, Reaction
from common.participant import MODE_HEADER, ActionRunner, StepContext
from common.participant_telemetry import ReactionStep
from protos.sagawire.v1 import events_pb2, participant_pb2
from services import saga_events as ev

log = logging.getLogger(__name__)

CHOREOGRAPHY = participant_pb2.SAGA_MODE_CHOREOGRAPHY
# Producers send a consumer only the events of choreographed sagas.
CHOREOGRAPHED_ONLY = {MODE_HEADER: "choreography"}


@dataclass(frozen=True)
class Rule:
    """On ``event`` from ``producer``: run ``action`` (or compensate it) as saga ``step``."""

    producer: str
    event: str
    action: str
    step: str
    compensate: bool = False


# The saga these rules carry on.
SAGA_TYPE = "place_order"

# Who reacts to what, by consuming service. Step names match coordinator/sagas.yaml.
RULES: Mapping[str, tuple[Rule, ...]] = {
    "inventory": (
        Rule("order", ev.ORDER_CREATED, "reserve", "reserve_stock"),
        Rule("payment", ev.PAYMENT_DECLINED, "release", "reserve_stock", compensate=True),
        Rule("payment", ev.PAYMENT_REFUNDED, "release", "reserve_stock", compensate=True),
    ),
    "payment": (
        Rule("inventory", ev.STOCK_RESERVED, "charge", "charge_payment"),
        Rule("shipping", ev.SHIPMENT_FAILED, "refund", "charge_payment", compensate=True),
    ),
    "shipping": (Rule("payment", ev.PAYMENT_CHARGED, "schedule", "schedule_shipment"),),
    "order": (
        Rule("shipping", ev.SHIPMENT_SCHEDULED, "approve_order", "approve_order"),
        Rule("inventory", ev.STOCK_REJECTED, "cancel_order", "create_order", compensate=True),
        Rule("inventory", ev.STOCK_RELEASED, "cancel_order", "create_order", compensate=True),
    ),
}


def _saga_event(event: events_pb2.Event) -> events_pb2.OrderSagaEvent:
    decoded = events_pb2.OrderSagaEvent()
    if not event.data.Unpack(decoded):
        raise PoisonEvent(f"payload is {event.data.type_url!r}, not a sagawire.v1.OrderSagaEvent")
    return decoded


def reaction(runner: ActionRunner, rule: Rule) -> Reaction:
    """The reaction that applies ``rule`` through the barrier, inside the consumer's tx."""
    table = runner.by_compensation if rule.compensate else runner.by_action
    action = table[rule.action]

    def react(conn: sqlite3.Connection, event: events_pb2.Event) -> None:
        saga_event = _saga_event(event)
        if saga_event.mode != CHOREOGRAPHY:
            return  # an orchestrated saga: the coordinator drives it
        data = saga_event.data
        if saga_event.reason and not data.cancel_reason:
            # The same words the coordinator uses (records.Failure.describe).
            why = f"{saga_event.step}: {saga_event.reason}"
            if saga_event.message:
                why += f" ({saga_event.message})"
            data.cancel_reason = why[:200]
        try:
            action.validate(data)
        except SagawireError as error:
            raise PoisonEvent(f"invalid saga data: {error.message}") from error
        ctx = StepContext(event.subject, rule.step, CHOREOGRAPHY)
        try:
            if rule.compensate:
                runner.compensate_in(conn, action, ctx, data)
            else:
                runner.execute_in(conn, action, ctx, data)
        except Aborted:
            log.info(
                "late event ignored saga=%s step=%s (already compensated)", event.subject, rule.step
            )
        except SagaExpired:
            # A saga older than the barrier's window: a late event of a finished saga
            # (retention removed its rows). Nothing ran; no event answers it, so a long
            # finished saga is never unwound (common/barrier.py).
            log.info("late event ignored saga=%s step=%s (expired)", event.subject, rule.step)
        except RequestMismatch as refused:
            # Another request holds the step's key: nothing ran. An execute answers the
            # chain with its rejection event, so the saga unwinds instead of stalling;
            # a compensation that undoes nothing is a poison event, kept for a look.
            if rule.compensate:
                raise
            log.warning("event refused saga=%s step=%s: %s", event.subject, rule.step, refused)
            runner.refused_in(conn, action, ctx, data, refused)

    return react


def reactions_of(service: str, runner: ActionRunner) -> dict[str, dict[str, Reaction]]:
    """Reactions of ``service``, grouped by the producer whose events trigger them."""
    grouped: dict[str, dict[str, Reaction]] = {}
    for rule in RULES.get(service, ()):
        grouped.setdefault(rule.producer, {})[rule.event] = reaction(runner, rule)
    return grouped


def started_by_events(service: str) -> frozenset[str]:
    """The actions of ``service`` that, in choreography, only another service's event
    starts (never a call: the coordinator starts a choreographed saga at its first step)."""
    return frozenset(r.action for r in RULES.get(service, ()) if not r.compensate)


def reaction_steps(service: str, producer: str) -> dict[str, ReactionStep]:
    """The saga step ``service`` runs on each event type of ``producer``: each attempt at
    the reaction is an attempt of that step in traces and metrics."""
    return {
        r.event: ReactionStep(SAGA_TYPE, r.step, r.action, r.compensate)
        for r in RULES.get(service, ())
        if r.producer == producer
    }


def reacting_actions(service: str, producer: str) -> dict[str, str]:
    """The action (or compensation) ``service`` runs on each event type of ``producer``."""
    return {r.event: r.action for r in RULES.get(service, ()) if r.producer == producer}
