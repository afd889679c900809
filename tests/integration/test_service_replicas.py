"""Two replicas of a service on one PostgreSQL schema (and NATS events) stay correct.

Every saga's step is sent to both replicas at once, and all the sagas race for the
same stock row or the same balance: the barrier's uniqueness holds across replicas
(one effect per saga, the same answer from both), stock is never oversold and money
never charged past the balance, because the store runs each piece of work as if alone
(serializable transactions, run again when they lose a race: common/pg_store.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from common.grpc_errors import parse_rpc_error
from protos.sagawire.v1 import common_pb2, inventory_pb2, participant_pb2, payment_pb2
from tests.integration.steps import execute, order_data, step_request
from tests.nats_support import events_over
from tests.postgres_support import store_on
from tests.support import Cluster, start_cluster

STOCK = 20
BALANCE = 10_000
SAGAS = 2 * STOCK  # twice what there is: half of them must be refused
SEED = f"""
currency = "EUR"
[order.prices]
"SKU-X" = 500
[inventory.stock]
"SKU-X" = {STOCK}
[payment.accounts]
"zed" = {BALANCE}
[shipping]
unserviceable = []
"""
APPLIED = participant_pb2.BARRIER_OUTCOME_APPLIED
REPLAYED = participant_pb2.BARRIER_OUTCOME_REPLAYED


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Cluster]]:
    """Inventory and payment, two replicas each, on one prefix of schemas and one stream."""
    seed = tmp_path / "seed.toml"
    seed.write_text(SEED)
    async with store_on("postgresql") as store, events_over("nats") as events:
        overrides = {**store.settings(), **events.settings(), "seed_file": seed}
        names = ["inventory", "payment"]
        first = await start_cluster(tmp_path / "a", names, overrides=overrides)
        try:
            second = await start_cluster(tmp_path / "b", names, overrides=overrides)
            try:
                yield first, second
            finally:
                await second.stop()
        finally:
            await first.stop()


async def _both(
    pair: tuple[Cluster, Cluster], service: str, request: participant_pb2.StepRequest
) -> list[participant_pb2.StepReply | BaseException]:
    """The same request sent to each replica at once."""
    calls = [execute(cluster, service, request) for cluster in pair]
    return await asyncio.gather(*calls, return_exceptions=True)


def _settle(answers: list[participant_pb2.StepReply | BaseException], reason: str) -> bool:
    """Whether the saga's step took effect, checking both replicas said the same thing:
    applied once and replayed once, or refused for ``reason`` twice."""
    replies = [a for a in answers if isinstance(a, participant_pb2.StepReply)]
    refusals = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(replies) + len(refusals) == 2, answers
    if refusals:
        assert not replies, answers
        assert {parse_rpc_error(r).reason for r in refusals} == {reason}
        return False
    assert sorted(r.outcome for r in replies) == [APPLIED, REPLAYED]
    assert replies[0].result == replies[1].result
    return True


async def test_replicas_reserve_each_saga_once_and_never_oversell(
    replicas: tuple[Cluster, Cluster],
) -> None:
    requests = [
        step_request("reserve", order_data(items=[common_pb2.LineItem(sku="SKU-X", quantity=1)]))
        for _ in range(SAGAS)
    ]
    answers = await asyncio.gather(*(_both(replicas, "inventory", r) for r in requests))

    applied = sum(_settle(a, "INSUFFICIENT_STOCK") for a in answers)
    assert applied == STOCK
    for cluster in replicas:  # both replicas read the same truth
        stock = await cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku="SKU-X"))
        assert (stock.available, stock.reserved) == (0, STOCK)


async def test_replicas_charge_each_saga_once_and_never_past_the_balance(
    replicas: tuple[Cluster, Cluster],
) -> None:
    amount = BALANCE * 2 // SAGAS
    requests = [
        step_request(
            "charge",
            order_data(
                customer_id="zed",
                items=[common_pb2.LineItem(sku="SKU-X", quantity=1)],
                total=common_pb2.Money(amount_minor=amount, currency="EUR"),
            ),
        )
        for _ in range(SAGAS)
    ]
    answers = await asyncio.gather(*(_both(replicas, "payment", r) for r in requests))

    applied = sum(_settle(a, "INSUFFICIENT_FUNDS") for a in answers)
    assert applied == BALANCE // amount
    first, _ = replicas
    account = await first.payment.GetAccount(payment_pb2.GetAccountRequest(customer_id="zed"))
    charges = await first.payment.ListCharges(
        payment_pb2.ListChargesRequest(customer_id="zed", page_size=SAGAS)
    )
    assert account.balance.amount_minor == 0
    assert sum(c.amount.amount_minor for c in charges.charges) == BALANCE  # conserved
    assert len({c.saga_id for c in charges.charges}) == applied
