"""Invariants of the domain rules under any sequence of operations (hypothesis).

- inventory: stock never negative; available + reserved of every SKU never changes,
  and reserved always equals what the open reservations hold;
- payment: money is conserved: balances + captured charges is constant, and no
  balance goes negative.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import BusinessRejection
from services.inventory import domain as inventory
from services.payment import domain as payment

# Pure functions: no deadline, so a loaded CI machine cannot make them flaky.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

SKUS = ("BOOK", "LAMP", "RARE")
INITIAL_STOCK = {"BOOK": 20, "LAMP": 5, "RARE": 1}


@dataclass(frozen=True)
class Reserve:
    lines: tuple[inventory.Line, ...]


@dataclass(frozen=True)
class Release:
    pick: int  # which open reservation, modulo how many there are


lines = st.lists(
    st.builds(inventory.Line, st.sampled_from((*SKUS, "UNKNOWN")), st.integers(1, 8)),
    min_size=1,
    max_size=4,
).map(tuple)
inventory_ops = st.lists(
    st.one_of(st.builds(Reserve, lines), st.builds(Release, st.integers(0, 1_000))),
    max_size=40,
)


@PROPERTY_SETTINGS
@given(inventory_ops)
def test_reserve_and_release_keep_stock_non_negative_and_conserved(
    ops: list[Reserve | Release],
) -> None:
    levels = {sku: inventory.StockLevel(sku, units, 0) for sku, units in INITIAL_STOCK.items()}
    open_reservations: list[list[inventory.Line]] = []
    for op in ops:
        if isinstance(op, Reserve):
            try:
                changed = inventory.reserve(levels, op.lines)
            except BusinessRejection as rejection:
                assert rejection.reason in {"UNKNOWN_SKU", "INSUFFICIENT_STOCK"}
                continue  # a rejection returns nothing, so nothing can change
            merged = inventory.merge_lines(op.lines)
            for line in merged:
                assert changed[line.sku].available == levels[line.sku].available - line.quantity
            levels = {**levels, **changed}
            open_reservations.append(merged)
        elif open_reservations:
            released = open_reservations.pop(op.pick % len(open_reservations))
            levels = {**levels, **inventory.release(levels, released)}

        for sku, level in levels.items():
            assert level.available >= 0
            assert level.reserved >= 0
            assert level.total == INITIAL_STOCK[sku]
            held = sum(ln.quantity for r in open_reservations for ln in r if ln.sku == sku)
            assert level.reserved == held


INITIAL_BALANCES = {"alice": 10_000, "bob": 2_500, "carol": 10}


@dataclass(frozen=True)
class Charge:
    customer_id: str
    amount_minor: int


@dataclass(frozen=True)
class Refund:
    pick: int


payment_ops = st.lists(
    st.one_of(
        st.builds(Charge, st.sampled_from((*INITIAL_BALANCES, "mallory")), st.integers(1, 6_000)),
        st.builds(Refund, st.integers(0, 1_000)),
    ),
    max_size=40,
)


@PROPERTY_SETTINGS
@given(payment_ops)
def test_charge_and_refund_conserve_money(ops: list[Charge | Refund]) -> None:
    accounts = {c: payment.Account(c, b, "EUR") for c, b in INITIAL_BALANCES.items()}
    captured: list[Charge] = []
    total = sum(INITIAL_BALANCES.values())
    for op in ops:
        if isinstance(op, Charge):
            before = accounts.get(op.customer_id)
            try:
                after = payment.charge(before, op.customer_id, op.amount_minor, "EUR")
            except BusinessRejection as rejection:
                if before is None:
                    assert rejection.reason == "UNKNOWN_CUSTOMER"
                else:
                    assert rejection.reason == "INSUFFICIENT_FUNDS"
                    assert op.amount_minor > before.balance_minor
                continue
            accounts[op.customer_id] = after
            captured.append(op)
        elif captured:
            refunded = captured.pop(op.pick % len(captured))
            account = accounts[refunded.customer_id]
            accounts[refunded.customer_id] = payment.refund(account, refunded.amount_minor)

        assert all(a.balance_minor >= 0 for a in accounts.values())
        balances = sum(a.balance_minor for a in accounts.values())
        assert balances + sum(c.amount_minor for c in captured) == total
