"""Every list RPC of the services pages: a page size with a default and a maximum, an
opaque token, a stable order; a bad size or token is INVALID_ARGUMENT naming it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from common.store import Connection
from contract.limits import MAX_PAGE_SIZE
from protos.sagawire.v1 import (
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    order_pb2,
    payment_pb2,
    shipping_pb2,
)
from services.runtime import DomainService
from tests.integration.steps import execute, failure, order_data, step_request
from tests.support import Cluster, listing


async def pages(method: Callable[..., Any], request: Any, field: str, size: int) -> list[list[Any]]:
    """Every page of a listing, ``size`` at a time."""
    found: list[list[Any]] = []
    request.page_size = size
    while True:
        reply = await method(request)
        found.append(list(getattr(reply, field)))
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


async def test_stock_and_accounts_page_by_key(cluster: Cluster) -> None:
    stock = await pages(cluster.inventory.ListStock, inventory_pb2.ListStockRequest(), "stock", 3)
    assert [[s.sku for s in page] for page in stock] == [
        ["SKU-BOOK", "SKU-LAMP", "SKU-MUG"],
        ["SKU-RARE"],
    ]
    accounts = await pages(
        cluster.payment.ListAccounts, payment_pb2.ListAccountsRequest(), "accounts", 1
    )
    assert [[a.customer_id for a in page] for page in accounts] == [
        ["alice"],
        ["bob"],
        ["carol"],
        ["dave"],
    ]


async def test_charges_and_shipments_page_newest_first(cluster: Cluster) -> None:
    sagas = []
    for _ in range(5):
        request = step_request(
            "charge", order_data(total=common_pb2.Money(amount_minor=100, currency="EUR"))
        )
        await execute(cluster, "payment", request)
        shipment = step_request("schedule", order_data(), saga_id=request.saga_id)
        await execute(cluster, "shipping", shipment)
        sagas.append(request.saga_id)
    charges = await pages(
        cluster.payment.ListCharges, payment_pb2.ListChargesRequest(), "charges", 2
    )
    assert [len(p) for p in charges] == [2, 2, 1]
    assert [c.saga_id for p in charges for c in p] == sagas[::-1]
    alice = await listing(
        cluster.payment.ListCharges, payment_pb2.ListChargesRequest(customer_id="alice"), "charges"
    )
    assert [c.saga_id for c in alice] == sagas[::-1]
    shipments = await pages(
        cluster.shipping.ListShipments, shipping_pb2.ListShipmentsRequest(), "shipments", 4
    )
    assert [s.saga_id for p in shipments for s in p] == sagas[::-1]
    # A row added between two pages shifts nothing: the next page starts after the key.
    first = await cluster.payment.ListCharges(payment_pb2.ListChargesRequest(page_size=2))
    await execute(cluster, "payment", step_request("charge", order_data()))
    rest = await cluster.payment.ListCharges(
        payment_pb2.ListChargesRequest(page_size=10, page_token=first.next_page_token)
    )
    assert [c.saga_id for c in rest.charges] == sagas[::-1][2:]


async def test_poison_events_page_oldest_first(cluster: Cluster) -> None:
    app = cluster.servers["inventory"].app
    assert isinstance(app, DomainService)

    def poison(conn: Connection) -> None:
        for n in range(1, 6):
            conn.execute(
                "INSERT INTO poison_event VALUES ('order', ?, ?, 't', 'bad', ?)",
                (n, f"e{n}", f"2026-01-01T00:00:0{n}+00:00"),
            )

    await app.db.transaction(poison)
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("inventory"))
    found = await pages(stub.ListPoisonEvents, events_pb2.ListPoisonEventsRequest(), "events", 2)
    assert [[e.sequence for e in page] for page in found] == [[1, 2], [3, 4], [5]]


@pytest.mark.parametrize(
    ("service", "method", "request_type"),
    [
        ("order", "ListOrders", order_pb2.ListOrdersRequest),
        ("payment", "ListCharges", payment_pb2.ListChargesRequest),
        ("payment", "ListAccounts", payment_pb2.ListAccountsRequest),
        ("shipping", "ListShipments", shipping_pb2.ListShipmentsRequest),
        ("inventory", "ListStock", inventory_pb2.ListStockRequest),
        ("inventory", "ListPoisonEvents", events_pb2.ListPoisonEventsRequest),
    ],
)
async def test_a_bad_page_size_or_token_is_named(
    cluster: Cluster, service: str, method: str, request_type: Any
) -> None:
    stub: Any = (
        events_pb2_grpc.EventStreamStub(cluster.channel(service))
        if method == "ListPoisonEvents"
        else getattr(cluster, service)
    )
    call = getattr(stub, method)
    # Another listing's token is not this one's.
    stock = await cluster.inventory.ListStock(inventory_pb2.ListStockRequest(page_size=1))
    for request, field in [
        (request_type(page_size=-1), "page_size"),
        (request_type(page_size=MAX_PAGE_SIZE + 1), "page_size"),
        (request_type(page_token="not-a-token"), "page_token"),
        (request_type(page_token=stock.next_page_token), "page_token"),
    ]:
        if method == "ListStock" and request.page_token == stock.next_page_token:
            continue  # its own token
        refused = await failure(call(request))
        assert (refused.code, refused.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)
