"""The chaos run's invariant checks, on fabricated end states: a consistent world passes,
and each kind of broken world is named, with the saga it concerns."""

from __future__ import annotations

from dataclasses import replace

from cli.chaos_check import (
    ANSWER_CHANGED,
    MISSING,
    MONEY,
    NOT_ACCEPTED,
    NOT_ONE_SAGA,
    NOT_TERMINAL,
    ORDER_MISMATCH,
    ORPHAN,
    OUTCOME_DIFFERS,
    STOCK,
    check_run,
    compare,
)
from cli.chaos_drive import Placement, order_key
from cli.chaos_plan import COMPENSATED, COMPLETED, REFUSAL, Catalog, Kind, Plan, draw_plan
from cli.chaos_state import (
    ChargeView,
    EndState,
    Holdings,
    OrderView,
    ReservationView,
    SagaView,
    ShipmentView,
)

CATALOG = Catalog.load()
RUN = "chaos-test"


def _world(plan: Plan) -> tuple[list[Placement], Holdings, EndState]:
    """What a correct stack holds after every planned order ended as planned."""
    before = Holdings(
        balances=dict(CATALOG.balances), stock={s: (n, 0) for s, n in CATALOG.stock.items()}
    )
    balances = dict(before.balances)
    stock = dict(before.stock)
    placements, sagas, orders, charges, shipments = [], [], [], [], []
    reservations = {}
    for order in plan.orders:
        key = order_key(RUN, order.number)
        saga_id = f"saga-{order.number}"
        placements.append(
            Placement(order.number, key, {saga_id}, told=order.expect, calls=1, latency=0.1)
        )
        step, reason = REFUSAL.get(order.kind, ("", ""))
        sagas.append(SagaView(saga_id, key, order.expect, 1, f"order-{order.number}", step, reason))
        total = order.total(CATALOG.prices)
        completed = order.kind is Kind.complete
        if order.kind is not Kind.unknown_sku:
            orders.append(
                OrderView(
                    f"order-{order.number}",
                    saga_id,
                    order.customer,
                    order.items,
                    total,
                    "APPROVED" if completed else "CANCELLED",
                )
            )
            reservations[saga_id] = ReservationView(
                saga_id, order.items, "RESERVED" if completed else "RELEASED"
            )
        if order.kind in (Kind.complete, Kind.unserviceable):
            status = "CAPTURED" if completed else "REFUNDED"
            charges.append(
                ChargeView(f"charge-{order.number}", saga_id, order.customer, total, status)
            )
        if completed:
            balances[order.customer] -= total
            for sku, quantity in order.items:
                available, reserved = stock[sku]
                stock[sku] = (available - quantity, reserved + quantity)
            shipments.append(
                ShipmentView(f"ship-{order.number}", saga_id, f"order-{order.number}", "SCHEDULED")
            )
    end = EndState(
        tuple(sagas),
        tuple(orders),
        tuple(charges),
        tuple(shipments),
        reservations,
        Holdings(balances, stock),
    )
    return placements, before, end


PLAN = draw_plan(CATALOG, 9, 60)


def _first(kind: Kind) -> int:
    return next(o.number for o in PLAN.orders if o.kind is kind)


def _kinds(end: EndState, placements: list[Placement] | None = None) -> set[str]:
    world_placements, before, _ = _world(PLAN)
    verdict = check_run(PLAN, placements or world_placements, before, end)
    return {v.kind for v in verdict.violations}


def test_a_world_where_every_order_ended_as_planned_passes() -> None:
    placements, before, end = _world(PLAN)
    verdict = check_run(PLAN, placements, before, end)
    assert verdict.violations == []
    assert verdict.completed == PLAN.expected_completed
    assert verdict.other_reason == []
    assert compare(verdict, PLAN.expected_completed) == []


def test_a_charge_left_captured_for_a_compensated_saga_is_an_orphan() -> None:
    _, before, end = _world(PLAN)
    number = _first(Kind.unserviceable)
    charges = tuple(
        replace(c, status="CAPTURED") if c.saga_id == f"saga-{number}" else c for c in end.charges
    )
    # Its money really left the account: conserved, and still an orphan.
    order = PLAN.orders[number]
    balances = dict(end.holdings.balances)
    balances[order.customer] -= order.total(CATALOG.prices)
    broken = replace(end, charges=charges, holdings=replace(end.holdings, balances=balances))
    placements, _, _ = _world(PLAN)
    verdict = check_run(PLAN, placements, before, broken)
    assert [(v.kind, v.saga_id) for v in verdict.violations] == [
        (f"{ORPHAN}: charge", f"saga-{number}")
    ]


def test_money_that_left_an_account_without_a_captured_charge_is_not_conserved() -> None:
    _, _, end = _world(PLAN)
    balances = dict(end.holdings.balances)
    customer = PLAN.orders[_first(Kind.complete)].customer
    balances[customer] -= 1
    assert _kinds(replace(end, holdings=replace(end.holdings, balances=balances))) == {MONEY}


def test_stock_that_vanished_or_a_reservation_left_held_is_caught() -> None:
    _, _, end = _world(PLAN)
    stock = dict(end.holdings.stock)
    sku = next(iter(stock))
    available, reserved = stock[sku]
    stock[sku] = (available - 1, reserved)
    assert _kinds(replace(end, holdings=replace(end.holdings, stock=stock))) == {STOCK}

    number = _first(Kind.declined)
    reservations = dict(end.reservations)
    reservations[f"saga-{number}"] = replace(reservations[f"saga-{number}"], status="RESERVED")
    # The reserved units are still counted as reserved: conserved, but an orphan.
    stock = dict(end.holdings.stock)
    for line_sku, quantity in PLAN.orders[number].items:
        available, reserved = stock[line_sku]
        stock[line_sku] = (available - quantity, reserved + quantity)
    held = replace(end, reservations=reservations, holdings=replace(end.holdings, stock=stock))
    assert _kinds(held) == {f"{ORPHAN}: reservation"}


def test_a_stalled_saga_and_a_pending_order_are_named() -> None:
    _, _, end = _world(PLAN)
    number = _first(Kind.complete)
    sagas = tuple(
        replace(s, status="STALLED") if s.saga_id == f"saga-{number}" else s for s in end.sagas
    )
    assert f"{NOT_TERMINAL}: STALLED" in _kinds(replace(end, sagas=sagas))

    number = _first(Kind.declined)
    orders = tuple(
        replace(o, status="PENDING") if o.saga_id == f"saga-{number}" else o for o in end.orders
    )
    assert _kinds(replace(end, orders=orders)) == {ORDER_MISMATCH}


def test_a_completed_saga_without_its_shipment_is_caught() -> None:
    _, _, end = _world(PLAN)
    number = _first(Kind.complete)
    shipments = tuple(s for s in end.shipments if s.saga_id != f"saga-{number}")
    assert _kinds(replace(end, shipments=shipments)) == {f"{MISSING}: shipment"}


def test_two_sagas_for_one_key_and_an_order_never_accepted_are_caught() -> None:
    placements, _, end = _world(PLAN)
    number = _first(Kind.complete)
    twin = replace(end.sagas[number], saga_id="saga-twin")
    assert NOT_ONE_SAGA in _kinds(replace(end, sagas=(*end.sagas, twin)))

    lost = list(placements)
    lost[number] = Placement(number, lost[number].key, error="UNAVAILABLE: gave up")
    sagas = tuple(s for s in end.sagas if s.saga_id != f"saga-{number}")
    orders = tuple(o for o in end.orders if o.saga_id != f"saga-{number}")
    charges = tuple(c for c in end.charges if c.saga_id != f"saga-{number}")
    shipments = tuple(s for s in end.shipments if s.saga_id != f"saga-{number}")
    gone = replace(end, sagas=sagas, orders=orders, charges=charges, shipments=shipments)
    assert NOT_ACCEPTED in _kinds(gone, lost)


def test_an_answer_the_saga_did_not_keep_is_caught() -> None:
    placements, _, end = _world(PLAN)
    number = _first(Kind.declined)
    told = list(placements)
    told[number] = replace(told[number], told=COMPLETED)
    assert _kinds(end, told) == {ANSWER_CHANGED}


def test_an_order_compensated_under_faults_differs_from_the_reference() -> None:
    placements, before, end = _world(PLAN)
    number = _first(Kind.complete)
    saga_id = f"saga-{number}"
    # A transient fault decided the outcome: everything undone, consistently.
    order = PLAN.orders[number]
    sagas = tuple(
        replace(s, status=COMPENSATED, failed_step="charge_payment", failure_code="UNAVAILABLE")
        if s.saga_id == saga_id
        else s
        for s in end.sagas
    )
    orders = tuple(
        replace(o, status="CANCELLED") if o.saga_id == saga_id else o for o in end.orders
    )
    charges = tuple(c for c in end.charges if c.saga_id != saga_id)
    shipments = tuple(s for s in end.shipments if s.saga_id != saga_id)
    reservations = dict(end.reservations)
    reservations[saga_id] = replace(reservations[saga_id], status="RELEASED")
    balances = dict(end.holdings.balances)
    balances[order.customer] += order.total(CATALOG.prices)
    stock = dict(end.holdings.stock)
    for sku, quantity in order.items:
        available, reserved = stock[sku]
        stock[sku] = (available + quantity, reserved - quantity)
    compensated = replace(
        end,
        sagas=sagas,
        orders=orders,
        charges=charges,
        shipments=shipments,
        reservations=reservations,
        holdings=Holdings(balances, stock),
    )
    told = list(placements)
    told[number] = replace(told[number], told=COMPENSATED)
    verdict = check_run(PLAN, told, before, compensated)
    assert verdict.violations == []  # consistent: only the comparison finds it
    differs = compare(verdict, PLAN.expected_completed)
    assert [(v.kind, v.saga_id) for v in differs] == [(OUTCOME_DIFFERS, saga_id)]
    assert "UNAVAILABLE" in differs[0].detail
