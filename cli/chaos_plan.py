"""What a chaos run places: N seeded orders whose outcomes do not depend on their order.

The orders are drawn from the chaos seed file (``cli/chaos_seed.toml``), the catalog
every stack of a chaos run is seeded with. Each order is one of four kinds, decided by
construction and never by what ran before it:

- ``complete``: a paying customer, SKUs with a price, a destination shipping serves —
  the saga completes;
- ``unknown_sku``: one SKU has no price — ``create_order`` refuses it (UNKNOWN_SKU);
- ``declined``: the customer cannot pay for a single item — ``charge_payment`` refuses
  it (INSUFFICIENT_FUNDS), after stock may have been reserved in parallel;
- ``unserviceable``: a destination shipping refuses — ``schedule_shipment`` refuses it
  (UNSERVICEABLE_DESTINATION), after the charge and the reservation.

:func:`shortfalls` checks that the stock and the balances cover every order of a plan
at once — those refused after a reservation or a charge included, since they hold
stock or money for a while — so a fault-free run with the same seed completes exactly
the ``complete`` orders, whatever the concurrency: a true reference.
"""

from __future__ import annotations

import random
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

CHAOS_SEED_FILE = Path(__file__).resolve().parent / "chaos_seed.toml"
COMPLETED = "COMPLETED"
COMPENSATED = "COMPENSATED"
# A SKU no seed file prices: create_order refuses any order holding it.
UNKNOWN_SKU = "CHAOS-NO-SUCH-SKU"
# Where paying customers' orders go; none is in the seed file's unserviceable list.
DESTINATIONS = ("Berlin", "Lyon", "Porto", "Oslo", "Vienna", "Turin")
_MAX_LINES = 3
_MAX_QUANTITY = 3


class Kind(StrEnum):
    """How an order ends, by construction."""

    complete = "complete"
    unknown_sku = "unknown_sku"
    declined = "declined"
    unserviceable = "unserviceable"


# Share of each kind in a plan (about 60% complete, as in the chaos runs).
_WEIGHTS = {Kind.complete: 60, Kind.unknown_sku: 13, Kind.declined: 13, Kind.unserviceable: 14}
# The step that refuses each kind, and its reason.
REFUSAL = {
    Kind.unknown_sku: ("create_order", "UNKNOWN_SKU"),
    Kind.declined: ("charge_payment", "INSUFFICIENT_FUNDS"),
    Kind.unserviceable: ("schedule_shipment", "UNSERVICEABLE_DESTINATION"),
}


class PlanError(Exception):
    """The seed file cannot support the plan asked for."""


@dataclass(frozen=True)
class Catalog:
    """The chaos seed file: prices, stock, balances (minor units), refused destinations."""

    currency: str
    prices: Mapping[str, int]
    stock: Mapping[str, int]
    balances: Mapping[str, int]
    unserviceable: tuple[str, ...]

    @classmethod
    def load(cls, path: Path = CHAOS_SEED_FILE) -> Catalog:
        with path.open("rb") as f:
            seed = tomllib.load(f)
        return cls(
            currency=str(seed["currency"]),
            prices={str(k): int(v) for k, v in seed["order"]["prices"].items()},
            stock={str(k): int(v) for k, v in seed["inventory"]["stock"].items()},
            balances={str(k): int(v) for k, v in seed["payment"]["accounts"].items()},
            unserviceable=tuple(str(d) for d in seed["shipping"]["unserviceable"]),
        )

    @property
    def skus(self) -> tuple[str, ...]:
        """SKUs with a price and stock, in a stable order."""
        return tuple(sorted(s for s in self.prices if s in self.stock))

    @property
    def paying(self) -> tuple[str, ...]:
        """Customers who can pay for at least the most expensive item."""
        top = max(self.prices.values())
        return tuple(sorted(c for c, b in self.balances.items() if b >= top))

    @property
    def penniless(self) -> tuple[str, ...]:
        """Customers who cannot pay for even the cheapest item."""
        cheapest = min(self.prices.values())
        return tuple(sorted(c for c, b in self.balances.items() if b < cheapest))

    def problems(self) -> list[str]:
        """Why this catalog cannot make every kind of order (empty when it can)."""
        found = []
        if UNKNOWN_SKU in self.prices:
            found.append(f"{UNKNOWN_SKU} has a price")
        if not self.skus:
            found.append("no SKU has both a price and stock")
        if not self.paying:
            found.append("no customer can pay for the most expensive item")
        if not self.penniless:
            found.append("no customer is too poor to pay for the cheapest item")
        if not self.unserviceable:
            found.append("shipping refuses no destination")
        if served := [d for d in DESTINATIONS if d.casefold() in self.refused]:
            found.append(f"shipping refuses {', '.join(served)}")
        return found

    @property
    def refused(self) -> frozenset[str]:
        return frozenset(d.casefold() for d in self.unserviceable)


@dataclass(frozen=True)
class PlannedOrder:
    """One order of the plan, and how it must end."""

    number: int
    kind: Kind
    customer: str
    items: tuple[tuple[str, int], ...]
    destination: str

    @property
    def expect(self) -> str:
        return COMPLETED if self.kind is Kind.complete else COMPENSATED

    @property
    def refusal(self) -> tuple[str, str]:
        """(step, reason) of the refusal that compensates it; empty for a complete order."""
        return REFUSAL.get(self.kind, ("", ""))

    def total(self, prices: Mapping[str, int]) -> int:
        """What it costs, in minor units (0 when a SKU has no price)."""
        if any(sku not in prices for sku, _ in self.items):
            return 0
        return sum(prices[sku] * quantity for sku, quantity in self.items)


@dataclass(frozen=True)
class Plan:
    """The orders of one seed, numbered 0..N-1."""

    seed: int
    orders: tuple[PlannedOrder, ...]

    @property
    def expected_completed(self) -> frozenset[int]:
        """The orders that complete in any fault-free run, by construction."""
        return frozenset(o.number for o in self.orders if o.kind is Kind.complete)

    def kinds(self) -> Counter[str]:
        return Counter(o.kind.value for o in self.orders)


def draw_plan(catalog: Catalog, seed: int, count: int) -> Plan:
    """The ``count`` orders of ``seed``: the same plan for the same arguments, always."""
    if problems := catalog.problems():
        raise PlanError(f"the chaos seed file cannot make this plan: {'; '.join(problems)}")
    rng = random.Random(f"sagawire-chaos-plan-{seed}")
    kinds, weights = list(_WEIGHTS), list(_WEIGHTS.values())
    orders = []
    for number in range(count):
        kind = rng.choices(kinds, weights)[0]
        lines = rng.randint(1, _MAX_LINES)
        skus = rng.sample(catalog.skus, min(lines, len(catalog.skus)))
        items = [(sku, rng.randint(1, _MAX_QUANTITY)) for sku in skus]
        customer = rng.choice(catalog.paying)
        destination = rng.choice(DESTINATIONS)
        if kind is Kind.unknown_sku:
            items[rng.randrange(len(items))] = (UNKNOWN_SKU, 1)
        elif kind is Kind.declined:
            customer = rng.choice(catalog.penniless)
        elif kind is Kind.unserviceable:
            destination = rng.choice(catalog.unserviceable)
        orders.append(PlannedOrder(number, kind, customer, tuple(items), destination))
    return Plan(seed, tuple(orders))


def shortfalls(
    plan: Plan, prices: Mapping[str, int], stock: Mapping[str, int], balances: Mapping[str, int]
) -> list[str]:
    """What the stock and balances lack to hold every order of the plan at once (empty:
    nothing). Orders refused before any reservation or charge (unknown SKU) need nothing;
    the penniless customer's charges are refused, so they need no money."""
    units: Counter[str] = Counter()
    money: Counter[str] = Counter()
    for order in plan.orders:
        if order.kind is Kind.unknown_sku:
            continue
        for sku, quantity in order.items:
            units[sku] += quantity
        if order.kind is not Kind.declined:
            money[order.customer] += order.total(prices)
    short = [
        f"{sku}: {units[sku]} units wanted, {stock.get(sku, 0)} available"
        for sku in sorted(units)
        if units[sku] > stock.get(sku, 0)
    ]
    short += [
        f"{customer}: {money[customer]} wanted, balance {balances.get(customer, 0)}"
        for customer in sorted(money)
        if money[customer] > balances.get(customer, 0)
    ]
    return short
