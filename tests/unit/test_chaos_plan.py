"""The chaos plan: the same orders for the same seed, each of a kind whose outcome does
not depend on the others, and a seed file that holds every order of a plan at once."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cli.chaos_plan import (
    COMPENSATED,
    COMPLETED,
    UNKNOWN_SKU,
    Catalog,
    Kind,
    PlanError,
    draw_plan,
    shortfalls,
)

CATALOG = Catalog.load()


def test_the_same_seed_draws_the_same_plan_and_another_seed_another() -> None:
    assert draw_plan(CATALOG, 7, 500) == draw_plan(CATALOG, 7, 500)
    assert draw_plan(CATALOG, 7, 500).orders != draw_plan(CATALOG, 8, 500).orders
    # A longer plan starts with the shorter one: --sagas does not reshuffle the orders.
    assert draw_plan(CATALOG, 7, 800).orders[:500] == draw_plan(CATALOG, 7, 500).orders


def test_every_kind_is_built_so_its_outcome_is_decided_by_the_order_alone() -> None:
    plan = draw_plan(CATALOG, 3, 1000)
    kinds = plan.kinds()
    assert set(kinds) == {k.value for k in Kind}
    assert 500 < kinds[Kind.complete] < 700
    refused = {d.casefold() for d in CATALOG.unserviceable}
    for order in plan.orders:
        skus = [sku for sku, _ in order.items]
        assert len(skus) == len(set(skus)), order  # one line per SKU: one reservation row each
        has_unknown = UNKNOWN_SKU in skus
        poor = order.customer in CATALOG.penniless
        unserviceable = order.destination.casefold() in refused
        # Exactly one cause of refusal, and only for the kinds that are refused.
        assert (has_unknown, poor, unserviceable) == (
            order.kind is Kind.unknown_sku,
            order.kind is Kind.declined,
            order.kind is Kind.unserviceable,
        ), order
        assert order.expect == (COMPLETED if order.kind is Kind.complete else COMPENSATED)
    assert plan.expected_completed == {o.number for o in plan.orders if o.kind is Kind.complete}


def test_the_chaos_seed_file_holds_a_large_plan_at_once() -> None:
    plan = draw_plan(CATALOG, 11, 20_000)
    assert shortfalls(plan, CATALOG.prices, CATALOG.stock, CATALOG.balances) == []
    # The penniless customer cannot pay for the cheapest item: declined by construction.
    assert max(CATALOG.balances[c] for c in CATALOG.penniless) < min(CATALOG.prices.values())


def test_shortfalls_name_the_sku_and_the_customer_that_run_short() -> None:
    plan = draw_plan(CATALOG, 5, 200)
    stock = dict.fromkeys(CATALOG.stock, 1)
    balances = dict.fromkeys(CATALOG.balances, 100)
    short = shortfalls(plan, CATALOG.prices, stock, balances)
    assert any(s.startswith("CHAOS-") for s in short)
    assert any(s.startswith("chaos-") for s in short)
    # The refused-at-create orders need nothing; the penniless customer's need no money.
    assert not any(s.startswith(UNKNOWN_SKU) or s.startswith("chaos-penniless") for s in short)


def test_a_catalog_that_cannot_make_every_kind_is_refused() -> None:
    everyone_rich = replace(CATALOG, balances=dict.fromkeys(CATALOG.balances, 10**12))
    with pytest.raises(PlanError, match="too poor"):
        draw_plan(everyone_rich, 1, 10)
    ships_everywhere = replace(CATALOG, unserviceable=())
    with pytest.raises(PlanError, match="refuses no destination"):
        draw_plan(ships_everywhere, 1, 10)
