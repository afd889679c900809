"""What ``sagawire demo`` does, and what each scenario must show to count as a success."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.drivers import status_name
from common.money import format_money as money
from protos.sagawire.v1 import (
    coordinator_pb2,
    inventory_pb2,
    order_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)

Status = coordinator_pb2.SagaStatus


@dataclass(frozen=True)
class Fault:
    """A fault the demo injects through a service's Admin API for one scenario."""

    service: str
    action: str
    fail_next: int = 0
    latency_ms: int = 0


@dataclass(frozen=True)
class Scenario:
    """One order (or the return of an earlier scenario's order), and what its saga must
    end as."""

    name: str
    title: str
    story: str
    customer: str
    items: tuple[tuple[str, int], ...]
    destination: str
    expected: Status.ValueType
    reason: str = ""  # the ErrorInfo reason the saga must fail with
    faults: tuple[Fault, ...] = ()
    # Effects the scenario exists to show: "released", "refunded", "retried".
    shows: tuple[str, ...] = ()
    # The scenario whose order this one returns (a return_order saga; ``items`` are that
    # order's); empty: this one places an order (place_order).
    returns: str = ""


_ALICE_FIRST = (("SKU-BOOK", 2), ("SKU-MUG", 1))

SCENARIOS = (
    Scenario(
        "completes",
        "An order that completes",
        "alice orders two books and a mug to Berlin: every step succeeds.",
        "alice",
        _ALICE_FIRST,
        "Berlin",
        Status.SAGA_STATUS_COMPLETED,
    ),
    Scenario(
        "out of stock",
        "Rejected for stock",
        "bob wants five of SKU-RARE, of which one exists: inventory rejects the reservation.",
        "bob",
        (("SKU-RARE", 5),),
        "Paris",
        Status.SAGA_STATUS_COMPENSATED,
        reason="INSUFFICIENT_STOCK",
    ),
    Scenario(
        "declined",
        "Rejected for funds after stock was reserved",
        "carol (balance 10.00) orders a 49.00 lamp. Payment is slowed by 300 ms so the "
        "reservation lands first; the declined charge makes the saga release it.",
        "carol",
        (("SKU-LAMP", 1),),
        "Lyon",
        Status.SAGA_STATUS_COMPENSATED,
        reason="INSUFFICIENT_FUNDS",
        faults=(Fault("payment", "charge", latency_ms=300),),
        shows=("released",),
    ),
    Scenario(
        "unshippable",
        "Shipping fails after the charge",
        "dave ships to Atlantis: stock reserved and money charged, then shipping refuses — "
        "the saga refunds the charge and releases the stock.",
        "dave",
        (("SKU-LAMP", 1), ("SKU-BOOK", 1)),
        "Atlantis",
        Status.SAGA_STATUS_COMPENSATED,
        reason="UNSERVICEABLE_DESTINATION",
        shows=("released", "refunded"),
    ),
    Scenario(
        "retried",
        "Survives transient failures",
        "payment is told to fail its next 2 charges with UNAVAILABLE; the charge is retried "
        "with backoff (by the coordinator in orchestration, by payment's event consumer in "
        "choreography) and the order completes.",
        "alice",
        (("SKU-MUG", 2),),
        "Madrid",
        Status.SAGA_STATUS_COMPLETED,
        faults=(Fault("payment", "charge", fail_next=2),),
        shows=("retried",),
    ),
    Scenario(
        "returned",
        "A completed order returned (the return_order saga)",
        "alice returns her first order: the order service accepts the return, payment "
        "refunds the charge, inventory puts the units back, the order is closed as returned.",
        "alice",
        _ALICE_FIRST,
        "",
        Status.SAGA_STATUS_COMPLETED,
        returns="completes",
    ),
    Scenario(
        "returned twice",
        "The same order returned again",
        "alice returns that order once more: the order service refuses, nothing is refunded "
        "or restocked twice.",
        "alice",
        _ALICE_FIRST,
        "",
        Status.SAGA_STATUS_COMPENSATED,
        reason="ALREADY_RETURNED",
        returns="completes",
    ),
    Scenario(
        "not returnable",
        "An order that was never approved cannot be returned",
        "bob returns the order inventory rejected: it was cancelled, so there is nothing to "
        "take back.",
        "bob",
        (("SKU-RARE", 5),),
        "",
        Status.SAGA_STATUS_COMPENSATED,
        reason="ORDER_NOT_RETURNABLE",
        returns="out of stock",
    ),
)


@dataclass(frozen=True)
class Holdings:
    """What the services hold: (available, reserved) per SKU, balance per customer."""

    stock: Mapping[str, tuple[int, int]]
    balances: Mapping[str, int]
    currency: str


@dataclass
class ScenarioResult:
    """What one scenario's saga did, what the services now hold, and the verdict."""

    scenario: Scenario
    before: Holdings
    saga: coordinator_pb2.Saga | None = None
    order: order_pb2.OrderRecord | None = None
    # A return: the saga that placed the returned order (its reservation and charge
    # are the ones read here).
    placed_by: coordinator_pb2.Saga | None = None
    reservation: inventory_pb2.Reservation | None = None
    charges: list[payment_pb2.Charge] = field(default_factory=list)
    shipment: shipping_pb2.Shipment | None = None
    after: Holdings | None = None
    checks: list[tuple[bool, str]] = field(default_factory=list)
    error: str = ""
    # Calls each faulted action received during the scenario (failed ones included).
    calls: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.checks) and all(ok for ok, _ in self.checks)


Check = tuple[bool, str]  # (held, what was checked)


def judge(o: ScenarioResult, mode: str | None = None) -> list[Check]:
    """Everything the scenario must show, each as (held, description).

    ``mode`` ("orchestration" / "choreography"), when the stack was told one, must be
    the mode the saga actually ran in.
    """
    s, saga = o.scenario, o.saga
    assert saga is not None and o.after is not None
    expected = status_name(s.expected)
    checks = [(saga.status == s.expected, f"saga {status_name(saga.status)} (expected {expected})")]
    if mode:
        ran = participant_pb2.SagaMode.Name(saga.mode).removeprefix("SAGA_MODE_").lower()
        checks.append((ran == mode, f"ran in {ran} mode (asked for {mode})"))
    if s.reason:
        f = saga.failure
        got = f"{f.reason or f.code or 'no reason'} at {f.step or '?'}"
        checks.append((f.reason == s.reason, f"failure {got} (expected {s.reason})"))
    completed = s.expected == Status.SAGA_STATUS_COMPLETED
    if s.returns:
        return checks + _returned(o, o.after, completed)
    checks.append(_order_finished(o, completed))
    checks += _paid_once(o, o.after) if completed else _restored(o, o.after)
    if "released" in s.shows:
        released = inventory_pb2.RESERVATION_STATUS_RELEASED
        held = o.reservation is not None and o.reservation.status == released
        checks.append((held, "the reservation was made, then released"))
    if "refunded" in s.shows:
        refunded = any(c.status == payment_pb2.CHARGE_STATUS_REFUNDED for c in o.charges)
        checks.append((refunded, "the charge was captured, then refunded"))
    if "retried" in s.shows:
        checks.append(_retried(o))
    return checks


def _returned(o: ScenarioResult, after: Holdings, completed: bool) -> list[Check]:
    """A return that went through: the order returned, its total refunded, its units back
    in stock. One that was refused: no refund, no stock moved."""
    if o.order is None:
        return [(False, "order missing")]
    customer, total = o.scenario.customer, o.order.total.amount_minor
    refunded = after.balances[customer] - o.before.balances[customer]
    name = order_pb2.OrderStatus.Name(o.order.status).removeprefix("ORDER_STATUS_").lower()
    if not completed:
        checks = [(refunded == 0, f"{customer}'s balance unchanged: nothing refunded")]
        checks += [
            (o.before.stock[sku] == after.stock[sku], f"{sku}: stock unchanged")
            for sku, _ in o.scenario.items
        ]
        return checks
    checks = [(o.order.status == order_pb2.ORDER_STATUS_RETURNED, f"order {name}")]
    text = f"{customer} refunded {money(refunded, after.currency)}, the order's total"
    refund = any(c.status == payment_pb2.CHARGE_STATUS_REFUNDED for c in o.charges)
    checks.append((refunded == total and refund, text))
    for sku, quantity in o.scenario.items:
        back = after.stock[sku][0] - o.before.stock[sku][0]
        checks.append((back == quantity, f"{sku}: {back} back in stock"))
    return checks


def _order_finished(o: ScenarioResult, completed: bool) -> Check:
    want = order_pb2.ORDER_STATUS_APPROVED if completed else order_pb2.ORDER_STATUS_CANCELLED
    if o.order is None:
        return False, "order missing"
    name = order_pb2.OrderStatus.Name(o.order.status).removeprefix("ORDER_STATUS_").lower()
    return o.order.status == want, f"order {name}"


def _captured(o: ScenarioResult) -> int:
    captured = payment_pb2.CHARGE_STATUS_CAPTURED
    return sum(c.amount.amount_minor for c in o.charges if c.status == captured)


def _paid_once(o: ScenarioResult, after: Holdings) -> list[Check]:
    """A completed order: charged its total exactly once, its items taken from stock."""
    customer = o.scenario.customer
    spent = o.before.balances[customer] - after.balances[customer]
    total = o.order.total.amount_minor if o.order else -1
    text = f"{customer} paid {money(spent, after.currency)} once"
    checks = [(spent == total == _captured(o), text)]
    for sku, quantity in o.scenario.items:
        taken = o.before.stock[sku][0] - after.stock[sku][0]
        checks.append((taken == quantity, f"{sku}: {taken} taken from stock"))
    return checks


def _restored(o: ScenarioResult, after: Holdings) -> list[Check]:
    """A compensated order: the customer's balance and every SKU's stock as before."""
    customer = o.scenario.customer
    spent = o.before.balances[customer] - after.balances[customer]
    text = f"{customer}'s balance restored (change {money(-spent, after.currency)})"
    checks = [(spent == 0 == _captured(o), text)]
    for sku, _ in o.scenario.items:
        available, reserved = after.stock[sku]
        text = f"{sku}: stock restored ({available:,} available, {reserved:,} reserved)"
        checks.append((o.before.stock[sku] == after.stock[sku], text))
    return checks


def _retried(o: ScenarioResult) -> Check:
    assert o.saga is not None
    injected = sum(f.fail_next for f in o.scenario.faults)
    if o.saga.mode == participant_pb2.SAGA_MODE_CHOREOGRAPHY:
        # The retries are the payment service's consumer's, not the coordinator's: count
        # the calls the faulted actions received (the failed ones and the one that worked).
        calls = sum(o.calls.values())
        return calls > injected, f"{calls} calls of the charge by the consumer, {injected} failed"
    transient = sum(
        a.outcome == "transient"
        for step in o.saga.steps
        for a in step.attempts
        if step.participant == "payment" and a.phase == "execute"
    )
    return transient >= injected, f"{transient} transient failure(s) of the charge, retried"
