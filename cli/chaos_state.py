"""What a stack holds after a chaos run, read through its public APIs only.

The coordinator's ``ListSagas`` (paged) gives every saga and its idempotency key;
the services' read APIs give the orders (``ListOrders``, paged), the charges
(``ListCharges``), the shipments (``ListShipments``), each saga's reservation
(``GetReservation``), the stock (``ListStock``) and the balances (``ListAccounts``),
every listing read page after page.
Everything is turned into plain frozen values, so the checks of
:mod:`cli.chaos_check` are pure functions of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import grpc

from bench.drivers import status_name
from cli.chaos_drive import open_channel as _channel
from common.grpc_errors import TRANSIENT_CODES
from common.paging import every_page
from common.tokens import with_token
from protos.sagawire.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    order_saga_pb2,
    payment_pb2,
    payment_pb2_grpc,
    shipping_pb2,
    shipping_pb2_grpc,
)

_T = TypeVar("_T")
_PAGE = 500
_TIMEOUT = 30.0
_READERS = 32
_POLL_EVERY = 0.1
# Statuses a saga can still leave on its own (STALLED included: late events settle it).
_MOVING = (
    coordinator_pb2.SAGA_STATUS_RUNNING,
    coordinator_pb2.SAGA_STATUS_COMPENSATING,
    coordinator_pb2.SAGA_STATUS_STALLED,
)


@dataclass(frozen=True)
class SagaView:
    saga_id: str
    key: str
    status: str  # "COMPLETED", "COMPENSATED", "STALLED", ...
    mode: int
    order_id: str
    failed_step: str = ""
    failure_reason: str = ""
    failure_code: str = ""
    # Seconds since the epoch, from the coordinator's clock (0: not finished).
    created_at: float = 0.0
    finished_at: float = 0.0


@dataclass(frozen=True)
class OrderView:
    order_id: str
    saga_id: str
    customer: str
    items: tuple[tuple[str, int], ...]
    total: int
    status: str  # "PENDING", "APPROVED", "CANCELLED"


@dataclass(frozen=True)
class ChargeView:
    charge_id: str
    saga_id: str
    customer: str
    amount: int
    status: str  # "CAPTURED", "REFUNDED"


@dataclass(frozen=True)
class ShipmentView:
    shipment_id: str
    saga_id: str
    order_id: str
    status: str  # "SCHEDULED", "CANCELLED"


@dataclass(frozen=True)
class ReservationView:
    saga_id: str
    lines: tuple[tuple[str, int], ...]
    status: str  # "RESERVED", "RELEASED"


@dataclass(frozen=True)
class Holdings:
    """Balances (minor units) per customer and (available, reserved) per SKU."""

    balances: Mapping[str, int]
    stock: Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class EndState:
    """Everything the checks look at: the run's sagas, and the services' records."""

    sagas: tuple[SagaView, ...]
    orders: tuple[OrderView, ...]
    charges: tuple[ChargeView, ...]
    shipments: tuple[ShipmentView, ...]
    reservations: Mapping[str, ReservationView]
    holdings: Holdings


def _name(enum_name: str, prefix: str) -> str:
    return enum_name.removeprefix(prefix)


async def _retrying(call: Callable[[], Awaitable[_T]], until: float) -> _T:
    """Call until it answers, retrying transient errors (a process restarting) until
    ``until`` (monotonic)."""
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() not in TRANSIENT_CODES or time.monotonic() > until:
                raise
        await asyncio.sleep(_POLL_EVERY)


async def read_holdings(addresses: Mapping[str, str], within: float = 30.0) -> Holdings:
    until = time.monotonic() + within
    async with (
        _channel(addresses["payment"], "payment") as payment,
        _channel(addresses["inventory"], "inventory") as inv,
    ):
        accounts = await every_page(
            lambda token: _retrying(
                lambda: payment_pb2_grpc.PaymentStub(payment).ListAccounts(
                    payment_pb2.ListAccountsRequest(page_size=_PAGE, page_token=token),
                    timeout=_TIMEOUT,
                ),
                until,
            ),
            lambda reply: reply.accounts,
        )
        stock = await every_page(
            lambda token: _retrying(
                lambda: inventory_pb2_grpc.InventoryStub(inv).ListStock(
                    inventory_pb2.ListStockRequest(page_size=_PAGE, page_token=token),
                    timeout=_TIMEOUT,
                ),
                until,
            ),
            lambda reply: reply.stock,
        )
    return Holdings(
        balances={a.customer_id: a.balance.amount_minor for a in accounts},
        stock={s.sku: (s.available, s.reserved) for s in stock},
    )


async def wait_settled(coordinator: str, token: str | None, within: float) -> bool:
    """Poll until no saga is RUNNING, COMPENSATING or STALLED (True), or ``within``
    seconds passed (False). One-saga pages: cheap to ask often."""
    until = time.monotonic() + within
    async with _channel(coordinator, "coordinator") as channel:
        stub = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), token)
        while True:
            moving = False
            for status in _MOVING:
                request = coordinator_pb2.ListSagasRequest(status=status, page_size=1)
                page = await _retrying(partial(stub.ListSagas, request, timeout=10), until)
                if page.sagas:
                    moving = True
                    break
            if not moving:
                return True
            if time.monotonic() > until:
                return False
            await asyncio.sleep(_POLL_EVERY * 5)


def _seconds(stamp: object) -> float:
    seconds = getattr(stamp, "seconds", 0)
    nanos = getattr(stamp, "nanos", 0)
    return float(seconds) + float(nanos) / 1e9


def _saga_view(saga: coordinator_pb2.Saga) -> SagaView:
    data = order_saga_pb2.OrderSagaData()
    saga.data.Unpack(data)
    return SagaView(
        saga_id=saga.saga_id,
        key=saga.idempotency_key,
        status=status_name(saga.status),
        mode=saga.mode,
        order_id=data.order_id,
        failed_step=saga.failure.step,
        failure_reason=saga.failure.reason,
        failure_code=saga.failure.code,
        created_at=_seconds(saga.created_at),
        finished_at=_seconds(saga.finished_at) if saga.HasField("finished_at") else 0.0,
    )


async def _sagas(
    coordinator: str, token: str | None, key_prefix: str, until: float
) -> list[SagaView]:
    found: list[SagaView] = []
    next_page = ""
    async with _channel(coordinator, "coordinator") as channel:
        stub = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), token)
        while True:
            request = coordinator_pb2.ListSagasRequest(page_size=_PAGE, page_token=next_page)
            page = await _retrying(partial(stub.ListSagas, request, timeout=_TIMEOUT), until)
            found.extend(
                _saga_view(s) for s in page.sagas if s.idempotency_key.startswith(key_prefix)
            )
            next_page = page.next_page_token
            if not next_page:
                return found


async def _orders(address: str, until: float) -> list[OrderView]:
    found: list[OrderView] = []
    next_page = ""
    async with _channel(address, "order") as channel:
        stub = order_pb2_grpc.OrderStub(channel)
        while True:
            request = order_pb2.ListOrdersRequest(page_size=_PAGE, page_token=next_page)
            page = await _retrying(partial(stub.ListOrders, request, timeout=_TIMEOUT), until)
            found.extend(
                OrderView(
                    order_id=o.order_id,
                    saga_id=o.saga_id,
                    customer=o.customer_id,
                    items=tuple((i.sku, i.quantity) for i in o.items),
                    total=o.total.amount_minor,
                    status=_name(order_pb2.OrderStatus.Name(o.status), "ORDER_STATUS_"),
                )
                for o in page.orders
            )
            next_page = page.next_page_token
            if not next_page:
                return found


async def _charges(address: str, until: float) -> list[ChargeView]:
    async with _channel(address, "payment") as channel:
        stub = payment_pb2_grpc.PaymentStub(channel)
        charges = await every_page(
            lambda token: _retrying(
                lambda: stub.ListCharges(
                    payment_pb2.ListChargesRequest(page_size=_PAGE, page_token=token),
                    timeout=_TIMEOUT,
                ),
                until,
            ),
            lambda reply: reply.charges,
        )
    return [
        ChargeView(
            charge_id=c.charge_id,
            saga_id=c.saga_id,
            customer=c.customer_id,
            amount=c.amount.amount_minor,
            status=_name(payment_pb2.ChargeStatus.Name(c.status), "CHARGE_STATUS_"),
        )
        for c in charges
    ]


async def _shipments(address: str, until: float) -> list[ShipmentView]:
    async with _channel(address, "shipping") as channel:
        stub = shipping_pb2_grpc.ShippingStub(channel)
        shipments = await every_page(
            lambda token: _retrying(
                lambda: stub.ListShipments(
                    shipping_pb2.ListShipmentsRequest(page_size=_PAGE, page_token=token),
                    timeout=_TIMEOUT,
                ),
                until,
            ),
            lambda reply: reply.shipments,
        )
    return [
        ShipmentView(
            shipment_id=s.shipment_id,
            saga_id=s.saga_id,
            order_id=s.order_id,
            status=_name(shipping_pb2.ShipmentStatus.Name(s.status), "SHIPMENT_STATUS_"),
        )
        for s in shipments
    ]


async def _reservations(
    address: str, saga_ids: frozenset[str], until: float
) -> dict[str, ReservationView]:
    gate = asyncio.Semaphore(_READERS)
    found: dict[str, ReservationView] = {}
    async with _channel(address, "inventory") as channel:
        stub = inventory_pb2_grpc.InventoryStub(channel)

        async def read(saga_id: str) -> None:
            request = inventory_pb2.GetReservationRequest(saga_id=saga_id)
            async with gate:
                try:
                    r = await _retrying(
                        lambda: stub.GetReservation(request, timeout=_TIMEOUT), until
                    )
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        return
                    raise
            found[saga_id] = ReservationView(
                saga_id=saga_id,
                lines=tuple((line.sku, line.quantity) for line in r.lines),
                status=_name(inventory_pb2.ReservationStatus.Name(r.status), "RESERVATION_STATUS_"),
            )

        await asyncio.gather(*(read(s) for s in sorted(saga_ids)))
    return found


async def read_end_state(
    coordinator: str,
    token: str | None,
    addresses: Mapping[str, str],
    key_prefix: str,
    within: float = 60.0,
) -> EndState:
    """The sagas whose idempotency key starts with ``key_prefix``, every order, charge
    and shipment the services hold (the checks tell ours from others'), and the
    reservation of each of those sagas."""
    until = time.monotonic() + within
    sagas = await _sagas(coordinator, token, key_prefix, until)
    saga_ids = frozenset(s.saga_id for s in sagas)
    orders, charges, shipments, reservations, holdings = await asyncio.gather(
        _orders(addresses["order"], until),
        _charges(addresses["payment"], until),
        _shipments(addresses["shipping"], until),
        _reservations(addresses["inventory"], saga_ids, until),
        read_holdings(addresses, max(1.0, until - time.monotonic())),
    )
    return EndState(
        sagas=tuple(sagas),
        orders=tuple(orders),
        charges=tuple(charges),
        shipments=tuple(shipments),
        reservations=reservations,
        holdings=holdings,
    )
